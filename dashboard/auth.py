"""Who may use the dashboard and what they may see: logins, roles and permissions (pure).

Two ways in. Configured logins (`CLINSTREAM_DASHBOARD__USERS`, entries ``name:role:hash``
with a salted PBKDF2-SHA256 hash from `clinstream password`), checked in constant time.
Or the OIDC hook: behind an authenticating reverse proxy (oauth2-proxy, a cloud load
balancer with OIDC) the dashboard trusts the headers the proxy sets for the user and their
groups. Identifiers (patient keys, names, message content) are masked unless the role
allows them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from dashboard.errors import LoginConfigError

Permission = Literal["identifiers", "replay", "edit", "review", "audit", "map"]
ROLES: Mapping[str, frozenset[Permission]] = {
    "viewer": frozenset(),  # numbers, masked lists
    "operator": frozenset({"replay"}),  # replay dead letters as they are
    "integration": frozenset({"replay", "edit", "identifiers", "map"}),  # fix messages, map local codes
    "clinician": frozenset({"identifiers", "review"}),  # read and review drafts
    "admin": frozenset({"identifiers", "replay", "edit", "review", "audit", "map"}),  # + who accessed what
}
ITERATIONS = 240_000
_SCHEME = "pbkdf2_sha256"


@dataclass(frozen=True)
class User:
    """A logged-in dashboard user."""

    name: str
    role: str

    def may(self, permission: Permission) -> bool:
        """Whether the role grants ``permission``."""
        return permission in ROLES.get(self.role, frozenset())

    @property
    def masked(self) -> bool:
        """Whether identifiers are hidden from this user."""
        return not self.may("identifiers")


@dataclass(frozen=True)
class Login:
    """One configured login."""

    name: str
    role: str
    hash: str


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``pbkdf2_sha256$iterations$salt$hash`` (base64) for a login entry."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return "$".join(
        (_SCHEME, str(iterations), base64.b64encode(salt).decode(), base64.b64encode(digest).decode())
    )


def _check_hash(encoded: str) -> tuple[int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != _SCHEME or not parts[1].isdigit():
        raise LoginConfigError("a dashboard login's hash is not pbkdf2_sha256$iterations$salt$hash")
    try:
        return (
            int(parts[1]),
            base64.b64decode(parts[2], validate=True),
            base64.b64decode(parts[3], validate=True),
        )
    except ValueError as exc:
        raise LoginConfigError("a dashboard login's hash is not valid base64") from exc


def parse_logins(entries: Iterable[str]) -> dict[str, Login]:
    """Configured ``name:role:hash`` entries by name; a bad entry stops start-up (named by
    position, never by its hash)."""
    logins = {}
    for n, entry in enumerate(entries, 1):
        name, _, rest = entry.partition(":")
        role, _, encoded = rest.partition(":")
        if not name or role not in ROLES:
            raise LoginConfigError(
                f"dashboard login {n}: needs name:role:hash with a role of {sorted(ROLES)}"
            )
        _check_hash(encoded)
        logins[name] = Login(name, role, encoded)
    return logins


def verify(logins: Mapping[str, Login], name: str, password: str) -> User | None:
    """The user when name and password match a configured login (constant time per hash)."""
    login = logins.get(name)
    if login is None:
        hash_password(password, salt=b"0" * 16)  # same cost as a real check: no user enumeration
        return None
    iterations, salt, expected = _check_hash(login.hash)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return User(login.name, login.role) if hmac.compare_digest(digest, expected) else None


def from_proxy_headers(
    headers: Mapping[str, str], user_header: str | None, role_header: str | None
) -> User | None:
    """The user an authenticating proxy vouches for (the OIDC hook), when the hook is on.

    Roles come from the groups header: the first group that names a role, else viewer.
    """
    if not user_header:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    name = lowered.get(user_header.lower(), "").strip()
    if not name:
        return None
    role = "viewer"
    if role_header:
        groups = [g.strip() for g in lowered.get(role_header.lower(), "").split(",")]
        role = next((g for g in groups if g in ROLES), "viewer")
    return User(name, role)
