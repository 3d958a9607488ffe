"""The HTTP edge every stage's routes share: the JSON error body (RFC 9457 style), and the
guard that checks each route's `kernel.access.Need` and writes its AuditEvent.

Errors never echo the request (no patient data from a body ends up in an error). A route is a
`Guarded`: before its handler runs, the caller's token must grant what the route needs (401
without one, 403 without the scope); after it, one AuditEvent per patient the handler named
(`patient_of`, `disclose`) is written to the audit log before the answer leaves. When the audit
log cannot take it, the caller gets 503 and none of the data.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kernel.access import Access, Need
from kernel.audit import Action, audit_event, outcome_of
from kernel.audit_kafka import AuditLog
from kernel.errors import AuditUnavailableError, PatientRefusedError
from kernel.identity import resolve_patient

log = logging.getLogger(__name__)
Endpoint = Callable[[Request], Awaitable[Response]]
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="clinstream"'}
OBSERVER = "clinstream API"
_ACTIONS: Mapping[str, Action] = {"GET": "R", "PUT": "U", "DELETE": "D"}


def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"status", "detail"}`` with ``status`` as the HTTP status."""
    return JSONResponse({"status": status, "detail": detail}, status_code=status, headers=headers)


def caller(request: Request) -> Access | None:
    """The authenticated caller of this request (None on a public or self-checking route)."""
    found = getattr(request.state, "access", None)
    return found if isinstance(found, Access) else None


def patient_of(request: Request, named: str) -> str:
    """The patient key a request names (``authority|identifier`` or a key), recorded for the
    AuditEvent; raises `PatientRefusedError` when the token's facilities exclude it."""
    access = caller(request)
    if access is not None:
        refusal = access.may_see_patient(named)
        if refusal is not None:
            raise PatientRefusedError(refusal)
    key = resolve_patient(named)
    _audit_notes(request).setdefault(key, set())
    return key


def search_types(request: Request, requested: Sequence[str], served: Sequence[str]) -> list[str] | None:
    """The type filter a search runs with for this caller (`kernel.access.Access.search_types`):
    ``[]`` unrestricted, a list, or None when the caller may read none of them."""
    access = caller(request)
    if access is None:
        return None
    return access.search_types(requested, served)


def readable(request: Request, refs: Iterable[str]) -> bool:
    """Whether the caller may read every ``Type/id`` of ``refs`` (an answer resting on a
    resource the caller may not read is left out whole)."""
    access = caller(request)
    return access is not None and all(access.reads(r.split("/", 1)[0]) for r in refs)


def disclose(request: Request, patient: str | None, resources: Iterable[str]) -> None:
    """Name what this answer shows of a patient (``Type/id`` references) for its AuditEvent."""
    _audit_notes(request).setdefault(patient, set()).update(resources)


def attribute(request: Request, principal: str) -> None:
    """Name the caller on a route that checks its callers itself (CDS Hooks' EHR)."""
    request.state.principal = principal


def _audit_notes(request: Request) -> dict[str | None, set[str]]:
    notes: dict[str | None, set[str]] | None = getattr(request.state, "audit_notes", None)
    if notes is None:
        notes = request.state.audit_notes = {}
    return notes


Refuse = Callable[[int, str, Mapping[str, str] | None], Response]


class Guarded(Route):
    """A route with its `Need`; the API server refuses to serve a route without one.
    ``refuse`` shapes its 401/403/503 answers (FHIR routes answer OperationOutcomes)."""

    def __init__(
        self, path: str, endpoint: Endpoint, *, methods: list[str], need: Need, refuse: Refuse = problem
    ) -> None:
        self.need = need
        super().__init__(path, _guard(endpoint, need, f"{methods[0]} {path}", refuse), methods=methods)


def _guard(endpoint: Endpoint, need: Need, what: str, refuse: Refuse) -> Endpoint:
    audited = need.kind in ("read", "write", "audit", "own")

    def audit_down() -> Response:
        return refuse(503, "the audit log is unavailable; retry later", {"Retry-After": "5"})

    async def guarded(request: Request) -> Response:
        access = caller(request)
        refusal = need.refusal(access)
        if refusal is not None:
            if access is None:
                return refuse(401, refusal, CHALLENGE)
            if not await _record(request, need, what, 403, refusal):
                return audit_down()
            return refuse(403, refusal, None)
        try:
            response = await endpoint(request)
        except PatientRefusedError as exc:
            response = refuse(403, exc.detail, None)
        if not audited or (need.kind == "own" and not getattr(request.state, "audit_notes", None)):
            return response
        if not await _record(request, need, what, response.status_code, "ok"):
            return audit_down()
        return response

    return guarded


async def _record(request: Request, need: Need, what: str, status: int, detail: str) -> bool:
    """Write the request's AuditEvents (one per patient named; one without a patient when it
    named none); False when the audit log did not take them."""
    sink: AuditLog | None = getattr(request.state, "audit_log", None)
    if sink is None:
        log.error("no audit log configured for %s: refusing to answer", what)
        return False
    access = caller(request)
    principal = access.principal if access else str(getattr(request.state, "principal", "") or "unknown")
    notes = dict(getattr(request.state, "audit_notes", None) or {})
    if not notes:
        notes = {None: set()}
    elif None in notes and len(notes) > 1:
        unnamed = notes.pop(None)
        for refs in notes.values():
            refs.update(unnamed)
    trace = secrets.token_hex(16)
    if request.method == "POST":  # a create, or a search or computation over the record
        action: Action = "C" if need.kind == "write" else "E"
    else:
        action = _ACTIONS[request.method]
    now, address = datetime.now(UTC), request.client.host if request.client else None
    events = [
        (
            audit_event(
                principal=principal,
                action=action,
                what=what,
                patient=patient,
                resources=refs,
                outcome=outcome_of(status),
                detail=detail if status >= 400 else "ok",
                at=now,
                trace_id=f"{trace}:{patient}",
                observer=OBSERVER,
                address=address,
            ),
            patient,
        )
        for patient, refs in notes.items()
    ]
    try:
        await sink.write_many(events)  # one round trip for a listing of many patients
    except AuditUnavailableError:
        log.error("the AuditEvent of %s could not be written: answering 503", what)
        return False
    return True
