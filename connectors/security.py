"""Who is calling: static bearer tokens and JWTs (HS256 secret or RS256/ES256 public key).

`Authenticator.identify` returns the caller's name (the JWT subject, or ``api-token``)
or None; the HTTP middleware turns None into 401. Token values never reach logs. The static
token's claims are its configured scopes (`CLINSTREAM_HTTP__API_TOKEN_SCOPES`); a JWT's are
its own, and a JWT without a ``scope`` claim reads and writes nothing.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

import jwt

from kernel.settings import HttpSettings

log = logging.getLogger(__name__)


class Authenticator:
    """Checks an ``Authorization`` header value."""

    def __init__(self, api_token: str, settings: HttpSettings) -> None:
        self._token = api_token.encode()
        self._keys: list[tuple[str | bytes, list[str]]] = []
        if settings.jwt_hs256_secret is not None:
            self._keys.append((settings.jwt_hs256_secret.get_secret_value(), ["HS256"]))
        if settings.jwt_public_key_file is not None:
            self._keys.append((Path(settings.jwt_public_key_file).read_bytes(), ["RS256", "ES256"]))
        self._static_claims = {"scope": settings.api_token_scopes}
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer

    def identify(self, authorization: str) -> str | None:
        """The caller's name, or None when the credentials are missing or wrong."""
        found = self.authenticate(authorization)
        return found[0] if found else None

    def authenticate(self, authorization: str) -> tuple[str, dict[str, Any]] | None:
        """The caller's name and the JWT's claims (none for the static token), or None."""
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return None
        if hmac.compare_digest(presented.encode(), self._token):
            return "api-token", dict(self._static_claims)
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(
                    presented,
                    key,
                    algorithms=algorithms,
                    audience=self._audience,
                    issuer=self._issuer,
                    options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
                )
            except jwt.InvalidTokenError:
                continue
            return f"jwt:{claims['sub']}", dict(claims)
        return None
