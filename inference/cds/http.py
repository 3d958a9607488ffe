"""The CDS Hooks service (2.0): discovery, `patient-view` cards from patient state, feedback.

Routes are Starlette routes mounted on the API server. They authenticate themselves with the
CDS client's JWT (`inference.cds.jwks_client`), not the API token: discovery is public (it holds no
patient data), a service call or feedback without a valid token gets 401.

A hook's patient is the EHR's FHIR Patient id (``context.patientId``). Where HL7 v2 feeds key
patients by medical record number (`CLINSTREAM_NORMALIZER__PATIENT_AUTHORITIES`), the Patient
resource is needed to find the key: from the request's prefetch, else read from the client's
``fhirServer`` with its ``fhirAuthorization``, else the answer is 412, as the spec asks. Cards
come from the saved state (no rule runs on the request path). Feedback is published to
`clinician.feedback.v1` keyed by patient, and the answer is sent only after the broker
confirmed it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inference.cds.cards import (
    DISCHARGE,
    HOOKS,
    ORDER_SELECT,
    PATIENT_VIEW,
    FeedbackRequest,
    HookRequest,
    current_alerts,
    discharge_cards,
    discovery,
    order_card,
    patient_view_card,
)
from inference.cds.jwks_client import CdsJwtVerifier, JwksSource
from inference.cds.medsafety import MEDICATION_ORDERS, check_orders
from inference.cds.state import PatientState
from inference.cds.state_store import SharedCards, SqliteStateStore
from kernel.access import OWN, PUBLIC, read, refs_in
from kernel.cds_hooks import HookService, draft_orders
from kernel.events import ClinicianFeedback, deterministic_id
from kernel.http import Guarded, attribute, disclose, patient_of, problem, readable
from kernel.identity import hl7_key
from kernel.openapi import operation, path_param

log = logging.getLogger(__name__)
Publish = Callable[[ClinicianFeedback], Awaitable[None]]
Body = TypeVar("Body", bound=BaseModel)
MAX_BODY_BYTES = 4 * 1024 * 1024
CDS_HOOKS_PATH = "/cds-services"  # the routes check their callers themselves (`own_auth`)
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cds-hooks"'}


class CdsHooksService:
    """The CDS Hooks endpoints over a state store."""

    def __init__(
        self,
        store: SqliteStateStore,
        verifier: CdsJwtVerifier,
        publish: Publish,
        *,
        http: httpx.AsyncClient,
        authorities: Mapping[str, str],
        cards_window: timedelta,
        public_base_url: str | None = None,
        jwks: JwksSource | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        extra: Sequence[HookService] = (),
        cards: SharedCards | None = None,
    ) -> None:
        self._store = store
        self._cards = cards or SharedCards(store)
        self._verifier = verifier
        self._publish = publish
        self._http = http
        self._authorities = dict(authorities)
        self._window = cards_window
        self._base = public_base_url.rstrip("/") if public_base_url else None
        self._clock = clock
        self._jwks = jwks
        self._extra = {s.id: s for s in extra}  # services other stages contribute

    def routes(self) -> list[Guarded]:
        """Discovery, the services and their feedback endpoints (the EHR's JWT, checked here;
        each call's AuditEvent names the EHR client and the patient)."""
        return [
            Guarded(CDS_HOOKS_PATH, self._discovery, methods=["GET"], need=PUBLIC),
            Guarded(CDS_HOOKS_PATH + "/{service}", self._call, methods=["POST"], need=OWN),
            Guarded(CDS_HOOKS_PATH + "/{service}/feedback", self._feedback, methods=["POST"], need=OWN),
        ]

    def alert_routes(self) -> list[Guarded]:
        """`GET /cds/alerts/{patient}`: a patient's current alerts (the API's bearer auth, not
        the CDS Hooks JWT: the agent tools and the dashboard read it). An alert is shown only
        to a caller who may read DetectedIssue and every resource the alert rests on."""

        async def current(request: Request) -> JSONResponse:
            named = str(request.path_params["patient"])
            if not 1 <= len(named) <= 256:
                return problem(422, "invalid patient")
            key = patient_of(request, named)
            state = self._store.cached(key) or await asyncio.to_thread(self._store.load, key)
            alerts = current_alerts(state, now=self._clock(), window=self._window) if state else []
            shown = [a.model_dump(mode="json") for a in alerts]
            shown = [a for a in shown if readable(request, refs_in(a))]
            disclose(request, key, {ref for a in shown for ref in refs_in(a)})
            return JSONResponse({"alerts": shown})

        return [Guarded("/cds/alerts/{patient:path}", current, methods=["GET"], need=read("DetectedIssue"))]

    async def _discovery(self, _: Request) -> JSONResponse:
        found = discovery()
        found["services"] = [*found["services"], *(s.definition() for s in self._extra.values())]
        return JSONResponse(found)

    def _authenticated(self, request: Request) -> str | None:
        audience = f"{self._base}{request.url.path}" if self._base else str(request.url)
        # The spec's aud is the service URL; a client may name the feedback URL's service instead.
        principal = self._verifier.verify(request.headers.get("authorization", ""), audience)
        if principal is None and request.url.path.endswith("/feedback"):
            principal = self._verifier.verify(
                request.headers.get("authorization", ""), audience.rsplit("/feedback", 1)[0]
            )
        return principal

    async def _admit(self, request: Request, model: type[Body], what: str) -> tuple[str, Body] | JSONResponse:
        """The caller and the parsed body, or the 404/401/413/400 answer."""
        if request.path_params["service"] not in HOOKS and request.path_params["service"] not in self._extra:
            return problem(404, "no such CDS service")
        principal = self._authenticated(request)
        if principal is None and self._jwks is not None:
            # The EHR rotated its keys: read them again (at most once a minute) and retry once.
            if self._verifier.names_unknown_key(request.headers.get("authorization", "")):
                if await self._jwks.refresh(forced=False):
                    principal = self._authenticated(request)
        if principal is None:
            return problem(401, "missing or invalid CDS Hooks JWT", CHALLENGE)
        attribute(request, principal)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return problem(413, "request body too large")
        try:
            return principal, model.model_validate_json(body)
        except ValidationError as exc:
            return problem(400, f"not a CDS Hooks {what}: {exc.error_count()} error(s)")

    async def _call(self, request: Request) -> Response:
        admitted = await self._admit(request, HookRequest, "request")
        if isinstance(admitted, JSONResponse):
            return admitted
        _, hook = admitted
        service = request.path_params["service"]
        expected = self._extra[service].hook if service in self._extra else HOOKS[service]
        if hook.hook != expected:
            return problem(400, f"service {service} answers {expected}, not {hook.hook}")
        patient = hook.context.get("patientId")
        if not isinstance(patient, str) or not patient:
            return problem(400, "context.patientId is required")
        key = await self._patient_key(hook, patient)
        if isinstance(key, JSONResponse):
            return key
        disclose(request, key, ())
        if service in self._extra:  # another stage's cards: decision support's state is not needed
            try:
                cards = await self._extra[service].cards(key, patient, hook.context)
            except ValueError as exc:
                return problem(400, str(exc))
            return await self._shown(key, cards)
        # Cards come from memory when the state and the cards shown are there (the usual case):
        # a thread hop per call would cost more than the answer.
        state = self._store.cached(key) or await asyncio.to_thread(self._store.load, key)
        if service == PATIENT_VIEW:
            alerts = current_alerts(state, now=self._clock(), window=self._window) if state else []
            cards = [patient_view_card(a, patient) for a in alerts]
        elif service == DISCHARGE:
            cards = discharge_cards(state, now=self._clock(), window=self._window) if state else []
        else:
            checked = self._order_cards(
                hook, state or PatientState(patient_id=key), selected_only=service == ORDER_SELECT
            )
            if isinstance(checked, JSONResponse):
                return checked
            cards = checked
        return await self._shown(key, cards)

    async def _shown(self, key: str, cards: list[dict[str, Any]]) -> JSONResponse:
        """The answer, once the cards are remembered (their feedback is found by uuid)."""
        await self._cards.remember(key, [(c["uuid"], c["source"]["topic"]["code"]) for c in cards])
        return JSONResponse({"cards": cards})

    def _order_cards(
        self, hook: HookRequest, state: PatientState, *, selected_only: bool
    ) -> list[dict[str, Any]] | JSONResponse:
        """Cards for the medication orders in ``context.draftOrders`` (order-select, order-sign)."""
        try:
            new, alongside = draft_orders(
                hook.context, selected_only=selected_only, validate=MEDICATION_ORDERS
            )
        except ValueError as exc:
            return problem(400, str(exc))
        now = self._clock()
        findings = check_orders(state, new, at=now, alongside=alongside)
        # Only a draft with an id can be named in a delete action.
        drafts = {f"{o['resourceType']}/{o['id']}" for o in new if o.get("id")}
        return [order_card(f, state.patient_id, drafts, now=now) for f in findings]

    async def _patient_key(self, hook: HookRequest, patient_id: str) -> str | JSONResponse:
        if not self._authorities:
            return patient_id
        resource = (hook.prefetch or {}).get("patient")
        if not isinstance(resource, dict) and hook.fhirServer:
            resource = await self._fetch_patient(hook, patient_id)
        if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
            return problem(412, "prefetch 'patient' is required and could not be fetched from fhirServer")
        return hl7_key(resource, self._authorities) or patient_id

    async def _fetch_patient(self, hook: HookRequest, patient_id: str) -> dict[str, Any] | None:
        token = (hook.fhirAuthorization or {}).get("access_token")
        headers = {"Accept": "application/fhir+json"}
        if isinstance(token, str):
            headers["Authorization"] = f"Bearer {token}"
        # The id comes from the request: quoted, it can only name a Patient, never another path.
        url = f"{str(hook.fhirServer).rstrip('/')}/Patient/{quote(patient_id, safe='')}"
        try:
            response = await self._http.get(url, headers=headers)
        except httpx.HTTPError:
            log.warning("cds-hooks: patient read from the client's FHIR server failed")
            return None
        if response.status_code != 200:
            log.warning("cds-hooks: patient read from the client's FHIR server: %s", response.status_code)
            return None
        try:
            resource = response.json()
        except ValueError:
            return None
        return resource if isinstance(resource, dict) else None

    async def _feedback(self, request: Request) -> Response:
        admitted = await self._admit(request, FeedbackRequest, "feedback request")
        if isinstance(admitted, JSONResponse):
            return admitted
        principal, parsed = admitted
        events: list[ClinicianFeedback] = []
        unknown: list[str] = []
        for item in parsed.feedback:
            owner = await self._cards.owner(item.card)
            if owner is None:
                unknown.append(item.card)
                continue
            patient_id, rule_id = owner
            disclose(request, patient_id, ())
            reason = item.overrideReason.reason if item.overrideReason else None
            events.append(
                ClinicianFeedback(
                    id=deterministic_id(
                        "Feedback", item.card, item.outcome, item.outcomeTimestamp.isoformat()
                    ),
                    patient_id=patient_id,
                    target="alert",
                    target_id=item.card,
                    rule_id=rule_id,
                    outcome=item.outcome,
                    reason_code=reason.code if reason else None,
                    reason_display=reason.display if reason else None,
                    comment=item.overrideReason.userComment if item.overrideReason else None,
                    accepted_suggestions=tuple(s.id for s in item.acceptedSuggestions),
                    at=item.outcomeTimestamp,
                    channel="cds-hooks",
                    principal=principal,
                )
            )
        if unknown:
            return problem(404, f"{len(unknown)} card(s) were never served by this service")
        try:
            for event in events:
                await self._publish(event)
        except Exception:
            log.exception("cds-hooks: feedback not confirmed by the broker")
            return problem(503, "feedback not stored; retry", {"Retry-After": "5"})
        return JSONResponse({}, status_code=200)


def openapi_paths() -> dict[str, dict[str, Any]]:
    """CDS Hooks (the EHR's JWT, per the specification) and the alerts read (OpenAPI)."""
    service = path_param("service")
    hook_errors = ("400", "401", "404", "412", "422")
    return {
        CDS_HOOKS_PATH: {"get": operation("CDS Hooks discovery.", errors=(), secured=False)},
        CDS_HOOKS_PATH + "/{service}": {
            "post": operation(
                "A hook call: cards for the patient.", body=HookRequest, params=[service], errors=hook_errors
            )
        },
        CDS_HOOKS_PATH + "/{service}/feedback": {
            "post": operation(
                "Accepted and overridden cards.",
                body=FeedbackRequest,
                params=[service],
                errors=(*hook_errors, "503"),
            )
        },
        "/cds/alerts/{patient}": {
            "get": operation(
                "A patient's current alerts.", params=[path_param("patient")], errors=("401", "422")
            )
        },
    }
