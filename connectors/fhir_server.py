"""FHIR R4 ingress over HTTP: create/update, batch and transaction Bundles, Subscription notifications.

Each accepted input is written to `ehr.inbound.fhir.v1` and answered only after the broker
confirmed the write; bad input gets a 4xx with an OperationOutcome and a dead letter; a
broker outage gets 503 with Retry-After (the client retries, nothing is claimed).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connectors import dicom_files
from connectors.errors import BrokerUnavailableError, FhirInputError, RecordTooLargeError
from connectors.fhir_ingress import (
    LANE_HEADER,
    Issue,
    assign_id,
    bundle_response,
    capability_statement,
    lane_of,
    operation_outcome,
    parse_json,
    patient_ref,
    read_notification,
    record_key,
    validate_bundle,
    validate_resource,
)
from connectors.kafka_sink import RecordSink, send_dead_letter
from kernel.access import PUBLIC, write
from kernel.events import (
    DeadLetter,
    FhirInbound,
    FhirInteraction,
    Topics,
    content_hash,
    envelope_headers,
)
from kernel.http import Guarded, caller, disclose
from kernel.openapi import FHIR_RESOURCE, OUTCOME, operation, path_param, query_param
from kernel.priority import LivePressure, in_lane
from kernel.settings import HttpSettings

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
DICOM_TYPES = ("application/dicom", "multipart/related")
VERSION = "0.1.0"


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A FHIR JSON response."""
    return JSONResponse(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def outcome_response(status: int, issues: list[Issue], headers: dict[str, str] | None = None) -> JSONResponse:
    """An OperationOutcome response."""
    return fhir_response(operation_outcome(issues), status, headers)


class FhirIngress:
    """The routes and the publishing behind them."""

    def __init__(
        self, sink: RecordSink, topics: Topics, settings: HttpSettings, pressure: LivePressure | None = None
    ) -> None:
        self._pressure = pressure
        self._sink = sink
        self._topics = topics
        self._settings = settings

    @staticmethod
    def _refuse_outcome(status: int, detail: str, headers: Mapping[str, str] | None) -> Response:
        """The shared guard's refusals as FHIR clients expect them: OperationOutcomes."""
        code: Any = {401: "login", 403: "security"}.get(status, "transient")
        return outcome_response(status, [Issue(code, detail)], dict(headers) if headers else None)

    def routes(self) -> list[Guarded]:
        """Starlette routes under /fhir and /dicom. Writing needs a write scope for each type
        written (``system/Observation.cu``, ``system/*.cruds``); a Bundle with one type the token
        may not write is refused whole (403) before anything is published."""
        any_write, outcome = write(), self._refuse_outcome
        return [
            Guarded("/fhir/metadata", self.metadata, methods=["GET"], need=PUBLIC, refuse=outcome),
            Guarded(
                "/fhir/subscription-notification",
                self._guard(self.notification),
                methods=["POST"],
                need=any_write,
                refuse=outcome,
            ),
            Guarded("/fhir", self._guard(self.bundle), methods=["POST"], need=any_write, refuse=outcome),
            Guarded(
                "/fhir/{type}", self._guard(self.create), methods=["POST"], need=any_write, refuse=outcome
            ),
            Guarded(
                "/fhir/{type}/{id}", self._guard(self.update), methods=["PUT"], need=any_write, refuse=outcome
            ),
            Guarded(
                "/dicom/studies",
                self._guard(self.stow, DICOM_TYPES),
                methods=["POST"],
                need=write("Patient", "ImagingStudy"),
                refuse=outcome,
            ),
        ]

    @staticmethod
    def _may_write(request: Request, resources: list[dict[str, Any]]) -> None:
        """Raise `FhirInputError` 403 unless the caller may write every resource's type (the
        routes' own `Need`, for the types this request writes)."""
        kinds = sorted({str(r.get("resourceType")) for r in resources})
        refusal = write(*kinds).refusal(caller(request)) if kinds else None
        if refusal is not None:
            raise FhirInputError(403, [Issue("security", refusal)])

    async def stow(self, request: Request, body: bytes) -> Response:
        """POST /dicom/studies (STOW-RS style): DICOM headers → Patient + ImagingStudy per study."""
        content_type = request.headers.get("content-type", "")
        files = dicom_files.parts(body, content_type)
        headers = [dicom_files.header(data, n) for n, data in enumerate(files)]
        studies, digest = [], content_hash(body)
        transactions = list(dicom_files.transactions(headers, request.query_params.get("issuer")))
        for resources in transactions:
            study = resources[-1]
            await self._publish(request, digest, "transaction", resources, f"dicom:{study['id']}")
            studies.append(
                {
                    "reference": f"ImagingStudy/{study['id']}",
                    "series": study["numberOfSeries"],
                    "instances": study["numberOfInstances"],
                }
            )
        return JSONResponse({"studies": studies, "instances": len(files)})

    async def metadata(self, request: Request) -> Response:
        """The CapabilityStatement (public, as FHIR clients discover servers with it)."""
        base = str(request.base_url).rstrip("/") + "/fhir"
        return fhir_response(capability_statement(base, now=datetime.now(UTC), version=VERSION))

    def _guard(
        self,
        handler: Callable[[Request, bytes], Awaitable[Response]],
        accepted: tuple[str, ...] = (FHIR_JSON, "application/json", "text/json"),
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if (content_type or accepted is DICOM_TYPES) and content_type not in accepted:
                what = "DICOM" if accepted is DICOM_TYPES else "FHIR JSON"
                return outcome_response(415, [Issue("not-supported", f"only {what} is accepted")])
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self._settings.max_body_bytes:
                return outcome_response(413, [Issue("too-costly", "request body too large")])
            if self._holds_history(request):
                return outcome_response(
                    429,
                    [Issue("throttled", "live records first: send history again in 1 s")],
                    {"Retry-After": "1"},
                )
            body = await request.body()
            if len(body) > self._settings.max_body_bytes:
                return outcome_response(413, [Issue("too-costly", "request body too large")])
            try:
                return await handler(request, body)
            except FhirInputError as exc:
                if exc.status == 403:  # not bad input: a token without the scope (no dead letter)
                    return outcome_response(403, exc.issues)
                return await self._refuse(request, body, exc)
            except RecordTooLargeError as exc:  # the dead letter cannot hold it either: it says its size
                return await self._refuse(request, b"", FhirInputError(413, [Issue("too-costly", str(exc))]))
            except BrokerUnavailableError:
                log.warning("broker unavailable: FHIR %s %s not accepted", request.method, request.url.path)
                return outcome_response(
                    503, [Issue("transient", "cannot store the input now; retry later")], {"Retry-After": "5"}
                )

        return guarded

    def _holds_history(self, request: Request) -> bool:
        """A backfill request while live records are late (`kernel.priority.LivePressure`)."""
        if self._pressure is None or not self._pressure.busy():
            return False
        try:
            return lane_of(request.headers.get(LANE_HEADER)) == "backfill"
        except FhirInputError:
            return False  # the handler refuses the request, saying why

    async def _refuse(self, request: Request, body: bytes, exc: FhirInputError) -> Response:
        letter = DeadLetter.from_error(exc, stage="connectors.fhir", payload=body)
        try:
            await send_dead_letter(self._sink, self._topics.deadletter, letter)
        except BrokerUnavailableError:
            return outcome_response(
                503, [Issue("transient", "cannot record the refusal now; retry later")], {"Retry-After": "5"}
            )
        log.info(
            "FHIR %s %s refused %d: %s",
            request.method,
            request.url.path,
            exc.status,
            "; ".join(i.code for i in exc.issues),
        )
        return outcome_response(exc.status, exc.issues)

    async def _publish(
        self,
        request: Request,
        digest: str,
        interaction: FhirInteraction,
        resources: list[dict[str, Any]],
        message_id: str,
        *,
        references: list[str] | None = None,
        full_urls: list[str | None] | None = None,
    ) -> None:
        patient = next((p for p in (patient_ref(r) for r in resources) if p), None)
        named = patient.rsplit("/", 1)[-1] if patient and "Patient/" in patient else None
        disclose(request, named, (f"{r['resourceType']}/{r['id']}" for r in resources if r.get("id")))
        source = f"fhir:{getattr(request.state, 'principal', 'unknown')}"
        headers = envelope_headers(  # the Envelope contract, built without model validation
            source_system=source,
            source_message_id=message_id,
            content_hash=digest,
            received_at=datetime.now(UTC),
            trace_id=secrets.token_hex(16),
            message_type=f"FHIR {interaction}",
            lane=lane_of(request.headers.get(LANE_HEADER)),
        )
        record = FhirInbound(
            interaction=interaction,
            resources=resources,
            patient_ref=patient,
            references=references or [],
            full_urls=full_urls or [],
        )
        await self._sink.send(
            self._topics.inbound_fhir,
            record.model_dump_json().encode(),
            key=record_key(patient, source).encode(),
            headers=headers,
        )

    @staticmethod
    def _version_id(resource: dict[str, Any]) -> str:
        meta = resource.get("meta") or {}
        return str(meta.get("versionId") or f"{resource['resourceType']}/{resource['id']}")

    async def create(self, request: Request, body: bytes) -> Response:
        """POST /fhir/{type}."""
        resource = validate_resource(parse_json(body), expected_type=request.path_params["type"])
        resource = assign_id(resource, body)
        self._may_write(request, [resource])
        await self._publish(request, content_hash(body), "create", [resource], self._version_id(resource))
        location = f"{str(request.base_url).rstrip('/')}/fhir/{resource['resourceType']}/{resource['id']}"
        return fhir_response(resource, 201, {"Location": location})

    async def update(self, request: Request, body: bytes) -> Response:
        """PUT /fhir/{type}/{id}: the EHR's id is kept (needed for write-back)."""
        resource = validate_resource(
            parse_json(body), expected_type=request.path_params["type"], expected_id=request.path_params["id"]
        )
        self._may_write(request, [resource])
        await self._publish(request, content_hash(body), "update", [resource], self._version_id(resource))
        return fhir_response(resource, 200)

    async def bundle(self, request: Request, body: bytes) -> Response:
        """POST /fhir with a batch or transaction Bundle."""
        lane = lane_of(request.headers.get(LANE_HEADER))  # a backfilled patient's history: off the loop
        data = parse_json(body)
        result = await in_lane(lane, lambda: validate_bundle(data), stage="ingress")
        digest = content_hash(body)
        bundle_id = str(data.get("id") or digest[:32])
        # Only entries without an id need one derived from the body (and their position).
        resources = [
            r if r.get("id") else assign_id(r, body + str(n).encode())
            for n, r in zip(result.accepted, result.resources, strict=True)
        ]
        self._may_write(request, resources)
        locations = {
            n: f"{r['resourceType']}/{r['id']}" for n, r in zip(result.accepted, resources, strict=True)
        }
        if result.bundle_type == "transaction":
            await self._publish(
                request, digest, "transaction", resources, bundle_id, full_urls=result.full_urls
            )
        else:
            for n, resource, full_url in zip(result.accepted, resources, result.full_urls, strict=True):
                await self._publish(
                    request, digest, "batch-entry", [resource], f"{bundle_id}/{n}", full_urls=[full_url]
                )
            if result.rejected:
                await self._refuse_entries(body, result.rejected)
        return fhir_response(bundle_response(result, locations), 200)

    async def _refuse_entries(self, body: bytes, rejected: dict[int, list[Issue]]) -> None:
        for issues in rejected.values():
            letter = DeadLetter.from_error(FhirInputError(400, issues), stage="connectors.fhir", payload=body)
            await send_dead_letter(self._sink, self._topics.deadletter, letter)

    async def notification(self, request: Request, body: bytes) -> Response:
        """POST /fhir/subscription-notification (topic-based Subscriptions, R4B and the R4 backport)."""
        note = read_notification(parse_json(body))
        self._may_write(request, note.resources)
        if note.type == "event-notification" and (note.resources or note.references):
            digest = content_hash(body)
            await self._publish(
                request,
                digest,
                "notification",
                note.resources,
                f"{note.subscription}#{digest[:16]}",
                references=note.references,
            )
        log.info(
            "subscription notification type=%s resources=%d references=%d",
            note.type,
            len(note.resources),
            len(note.references),
        )
        return Response(status_code=200)


def openapi_paths() -> dict[str, dict[str, Any]]:
    """FHIR and DICOM ingress (OpenAPI); errors are OperationOutcomes."""
    fhir = ("application/fhir+json", "application/json")
    errors = ("400", "401", "413", "415", "422", "503")
    kind = path_param("type", r"^[A-Z][A-Za-z]{1,63}$")

    def op(summary: str, **kwargs: Any) -> dict[str, Any]:
        return operation(summary, media=fhir, errors=errors, error_schema=OUTCOME, **kwargs)

    return {
        "/fhir/metadata": {"get": operation("CapabilityStatement.", errors=(), secured=False)},
        "/fhir": {"post": op("A transaction or batch Bundle.", body=FHIR_RESOURCE, ok="200")},
        "/fhir/subscription-notification": {
            "post": op("A Subscription notification Bundle.", body=FHIR_RESOURCE)
        },
        "/fhir/{type}": {"post": op("Create a resource.", body=FHIR_RESOURCE, params=[kind], ok="201")},
        "/fhir/{type}/{id}": {
            "put": op(
                "Create or update a resource.",
                body=FHIR_RESOURCE,
                params=[kind, path_param("id", r"^[A-Za-z0-9\-.]{1,64}$")],
            )
        },
        "/dicom/studies": {
            "post": operation(
                "STOW-RS: DICOM instances (headers read, pixels ignored).",
                body={"type": "string", "format": "binary"},
                media=("application/dicom",),
                params=[query_param("issuer", {"type": "string"})],
                errors=errors,
                error_schema=OUTCOME,
            )
        },
    }
