"""CDS Hooks request authentication: the EHR's JWT bearer token, verified as the spec asks.

The CDS client signs a short-lived JWT for every call (CDS Hooks 2.0, "Trusting CDS Clients"):
``iss`` names the client, ``aud`` is the URL of the service being called, ``exp`` is at most
five minutes away, ``jti`` is unique. Keys come from a JWKS file of the EHR's public keys
(``kid`` in the token header picks one; RS256/RS384/ES256/ES384), or, for development and
tests only, an HS256 shared secret. A ``jti`` seen before is refused until its token expires
(replay). Token contents never reach logs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt

log = logging.getLogger(__name__)

ASYMMETRIC = ["RS256", "RS384", "ES256", "ES384"]
MAX_LIFETIME_S = 300
LEEWAY_S = 30


def _peek_header(token: str) -> dict[str, Any] | None:
    """The token's header, unverified: only to pick the key (`jwt.decode` checks it again).

    PyJWT's own reader checks every character of every segment in Python; reading the token
    twice with it did that work twice on every CDS Hooks call.
    """
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        return None
    return header if isinstance(header, dict) else None


class CdsJwtVerifier:
    """Checks ``Authorization: Bearer <jwt>`` on CDS Hooks calls."""

    def __init__(
        self,
        *,
        hs256_secret: str | None = None,
        jwks_file: Path | None = None,
        issuers: tuple[str, ...] = (),
    ) -> None:
        self._secret = hs256_secret
        self._keys: dict[str, Any] = {}
        if jwks_file is not None:
            self.set_keys(json.loads(Path(jwks_file).read_text()))
        self._issuers = frozenset(issuers)
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def set_keys(self, jwks: dict[str, Any]) -> int:
        """Use the public keys of a JWKS document (replacing earlier ones); how many have a kid.

        Raises:
            jwt.PyJWKSetError: not a JWKS with a usable key.
        """
        keys = jwt.PyJWKSet.from_dict(jwks).keys
        self._keys = {key.key_id: key for key in keys if key.key_id}
        return len(self._keys)

    def names_unknown_key(self, authorization: str) -> bool:
        """Whether the token asks for an asymmetric key by a kid we do not have (time to refresh)."""
        header = _peek_header(authorization.partition(" ")[2].strip())
        return (
            header is not None
            and header.get("alg") in ASYMMETRIC
            and str(header.get("kid", "")) not in self._keys
        )

    @property
    def configured(self) -> bool:
        """False when no key is configured: every call is refused."""
        return bool(self._secret or self._keys)

    def verify(self, authorization: str, audience: str) -> str | None:
        """The caller's issuer, or None when the token is missing, invalid, replayed or not for us."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        header = _peek_header(token)
        if header is None:
            return None
        try:
            key, algorithms = self._key_for(header)
            if key is None:
                return None
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=audience,
                leeway=LEEWAY_S,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidTokenError:
            return None
        issuer, jti = str(claims["iss"]), str(claims["jti"])
        if self._issuers and issuer not in self._issuers:
            return None
        if int(claims["exp"]) - int(claims["iat"]) > MAX_LIFETIME_S:
            return None
        if not self._first_use(f"{issuer}\x00{jti}", float(claims["exp"])):
            return None
        return issuer

    def _key_for(self, header: dict[str, Any]) -> tuple[Any, list[str]]:
        algorithm = header.get("alg")
        if algorithm == "HS256" and self._secret:
            return self._secret, ["HS256"]
        if algorithm in ASYMMETRIC:
            key = self._keys.get(str(header.get("kid", "")))
            if key is not None:
                return key.key, [str(algorithm)]
        return None, []

    def _first_use(self, token_id: str, expires: float) -> bool:
        now = time.time()
        with self._lock:
            if len(self._seen) > 10_000:
                self._seen = {k: t for k, t in self._seen.items() if t + LEEWAY_S > now}
            if token_id in self._seen:
                return False
            self._seen[token_id] = expires
            return True


class JwksSource:
    """The EHR's JWKS URL: read at start, hourly, and when a token names an unknown kid.

    A refresh asked for by a token happens at most once a minute, so a stream of tokens with a
    bogus kid cannot turn the service into a client hammering the EHR.
    """

    def __init__(
        self,
        url: str,
        verifier: CdsJwtVerifier,
        http: httpx.AsyncClient,
        *,
        min_interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._verifier = verifier
        self._http = http
        self._min_interval = min_interval_s
        self._clock = clock
        self._last: float | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, *, forced: bool = True) -> bool:
        """Fetch the keys now (``forced``) or if the last fetch is old enough; True when fetched."""
        async with self._lock:
            now = self._clock()
            if not forced and self._last is not None and now - self._last < self._min_interval:
                return False
            self._last = now
            try:
                response = await self._http.get(self._url, headers={"Accept": "application/json"})
                response.raise_for_status()
                count = self._verifier.set_keys(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWKSetError) as exc:
                log.warning("cds-hooks: JWKS from the configured URL not read (%s)", type(exc).__name__)
                return False
            log.info("cds-hooks: %d key(s) read from the JWKS URL", count)
            return True

    async def keep_fresh(self, every_s: float = 3600.0, retry_s: float = 60.0) -> None:
        """Refresh forever: hourly, or every minute while no key could be read."""
        while True:
            ok = await self.refresh()
            await asyncio.sleep(every_s if ok else retry_s)
