"""Who may read and write what: SMART App Launch v2 scopes, per route (pure).

A token's ``scope`` claim (space separated) grants access by context, resource type and
interaction: ``user/Observation.rs``, ``system/*.cruds``, ``patient/*.rs``. SMART v1 forms
(``.read``, ``.write``, ``.*``) are read as ``rs``, ``cud`` and ``cruds``. Reading means ``r``
or ``s``; writing means ``c`` or ``u``. A scope with a query restriction
(``user/Observation.rs?category=laboratory``) grants nothing here: honouring it in part would
show more than it allows.

``*`` covers every clinical type but not the audit log: reading ``AuditEvent`` needs the type
named (``system/AuditEvent.rs``), so that a clinician's ``user/*.rs`` does not show who else
looked at a patient.

``patient/`` scopes hold only for the patients a token names in its ``patient`` or
``patients`` claim (an agent's token). An optional ``facilities`` claim (a list of assigning
authorities) restricts a token to the patients those sites registered: such a token must name
a patient as ``authority|identifier``.

Every route states what it needs as a `Need`; `Need.refusal` says why a token may not call it.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

AUDIT_TYPE = "AuditEvent"
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.(read|write|\*|c?r?u?d?s?)$")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_READ, _WRITE = frozenset("rs"), frozenset("cu")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one context (user/system or patient) grants: the types read and written."""

    read: frozenset[str] = frozenset()
    write: frozenset[str] = frozenset()

    def reads(self, kind: str) -> bool:
        """Whether ``kind`` may be read (``*`` covers all but the audit log)."""
        return kind in self.read or (kind != AUDIT_TYPE and "*" in self.read)

    def writes(self, kind: str) -> bool:
        """Whether ``kind`` may be created or updated."""
        return kind in self.write or (kind != AUDIT_TYPE and "*" in self.write)


def parse_scopes(scopes: str | Iterable[str]) -> tuple[Grant, Grant]:
    """(user/system grant, patient grant) from a scope string; unknown scopes grant nothing."""
    words = scopes.split() if isinstance(scopes, str) else list(scopes)
    read: dict[bool, set[str]] = {False: set(), True: set()}
    write: dict[bool, set[str]] = {False: set(), True: set()}
    for word in words:
        found = _SCOPE.match(word)
        if found is None:
            continue
        context, kind, letters = found.groups()
        letters = _V1.get(letters, letters)
        if not letters:
            continue
        patient = context == "patient"
        if set(letters) & _READ:
            read[patient].add(kind)
        if set(letters) & _WRITE:
            write[patient].add(kind)
    return (
        Grant(frozenset(read[False]), frozenset(write[False])),
        Grant(frozenset(read[True]), frozenset(write[True])),
    )


@dataclass(frozen=True, slots=True)
class Access:
    """One authenticated caller: who, and what their token allows."""

    principal: str
    broad: Grant = field(default_factory=Grant)
    """user/ and system/ scopes: any patient."""
    narrow: Grant = field(default_factory=Grant)
    """patient/ scopes: only ``patients``."""
    patients: frozenset[str] = frozenset()
    facilities: frozenset[str] | None = None
    """None: no facility restriction."""

    @property
    def patient_scoped(self) -> bool:
        """A token that names patients (an agent's): good for the agent tools only."""
        return bool(self.patients)

    def reads(self, kind: str) -> bool:
        """Whether the token may read ``kind`` on the routes (patient/ scopes are the agent
        tools' business: a patient-scoped token calls nothing else)."""
        return self.broad.reads(kind)

    def writes(self, kind: str) -> bool:
        """Whether the token may write ``kind`` on the routes."""
        return self.broad.writes(kind)

    def search_types(self, requested: Sequence[str], served: Sequence[str]) -> list[str] | None:
        """The type filter for a search: ``[]`` for no restriction, a list to search only those,
        None when the token may read none of what was asked (answer empty, search nothing).

        ``served``: the types the route can return (what ``*`` stands for here)."""
        if not requested and all(self.reads(k) for k in served):
            return []
        wanted = list(requested) or list(served)
        allowed = [k for k in wanted if self.reads(k)]
        return allowed or None

    def may_see_patient(self, named: str) -> str | None:
        """None when the facility claim allows the patient named as ``named`` (an
        ``authority|identifier`` or a key), else why not (no patient data in the text)."""
        if self.facilities is None:
            return None
        authority, bar, _ = named.partition("|")
        if not bar:
            return "this token is limited to facilities: name the patient as authority|identifier"
        if authority not in self.facilities:
            return "the patient is outside this token's facilities"
        return None


def access_of(principal: str, claims: Mapping[str, Any], default_scopes: str = "") -> Access:
    """The access a token's claims grant; ``default_scopes`` stand for a missing ``scope``
    claim (the static service token's configured scopes)."""
    raw = claims.get("scope", default_scopes)
    broad, narrow = parse_scopes(raw if isinstance(raw, str) else "")
    named: list[str] = []
    if isinstance(claims.get("patient"), str):
        named.append(claims["patient"])
    listed = claims.get("patients")
    if isinstance(listed, list):
        named += [p for p in listed if isinstance(p, str) and p]
    sites = claims.get("facilities")
    facilities = frozenset(s for s in sites if isinstance(s, str)) if isinstance(sites, list) else None
    return Access(principal, broad, narrow, frozenset(named), facilities)


FHIR_REF = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")


def refs_in(value: Any, known: Container[str] | None = None) -> set[str]:
    """Every string in a JSON value that is one of the ``known`` references (``Type/id``), or
    shaped like one when ``known`` is None: the resources an answer rests on, whatever its
    shape."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "/" in item and (item in known if known is not None else FHIR_REF.match(item)):
                found.add(item)
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return found


Kind = Literal["public", "token", "read", "write", "audit", "own"]


@dataclass(frozen=True, slots=True)
class Need:
    """What a route needs.

    - ``public``: nothing (health, the FHIR capability statement).
    - ``token``: a valid token, no patient data (metrics, the knowledge base, index counts).
    - ``read``: read access to at least one of ``types``; the route answers only those the
      token may read.
    - ``write``: write access to every one of ``types``.
    - ``audit``: read access to the audit log.
    - ``own``: the route checks its caller itself (CDS Hooks' EHR JWTs, the agent tools'
      patient scopes) and says so in its own audit record.
    """

    kind: Kind
    types: tuple[str, ...] = ()

    def refusal(self, access: Access | None) -> str | None:
        """None when ``access`` may call the route, else why not."""
        if self.kind in ("public", "own"):
            return None
        if access is None:
            return "missing or invalid bearer token"
        if self.kind == "token":
            return None
        if self.kind == "audit":
            return None if access.reads(AUDIT_TYPE) else "this token's scope does not grant AuditEvent read"
        if self.kind == "read":
            if not any(access.reads(k) for k in self.types):
                return f"this token's scope grants read of none of {', '.join(self.types)}"
            return None
        if not self.types:  # the route checks each type it writes; it needs some write scope
            return None if access.broad.write else "this token's scope grants no write"
        missing = [k for k in self.types if not access.writes(k)]
        return f"this token's scope does not grant write of {', '.join(missing)}" if missing else None


PUBLIC, TOKEN, OWN, AUDIT = Need("public"), Need("token"), Need("own"), Need("audit")


def read(*types: str) -> Need:
    """A route that answers patient data of these types."""
    return Need("read", types)


def write(*types: str) -> Need:
    """A route that writes patient data of these types."""
    return Need("write", types)
