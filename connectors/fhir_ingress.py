"""FHIR R4 input: parsing, validation, Bundles, Subscription notifications, OperationOutcomes.

Pure functions (no I/O): the HTTP routes in `connectors.fhir_server` call them and publish
what they return. Validation uses fhir.resources' R4B models. Error details name the
element path (``Observation.status``) and the problem, never the submitted value, because
values are patient data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from connectors.errors import FhirInputError
from kernel.events import Lane, deterministic_id
from kernel.fhir_models import model_class

IssueCode = Literal[
    "invalid",
    "structure",
    "required",
    "value",
    "not-supported",
    "security",
    "login",
    "too-costly",
    "throttled",
    "transient",
    "processing",
    "informational",
    "not-found",
]
# Resource types that are about one patient through this element.
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary")
_REFERENCE_TYPE = re.compile(r"^([A-Za-z]+)[/?]")
# Elements with a required binding that fhir.resources does not enforce (it checks the code
# syntax, not the value set). The elements an EHR feed carries and downstream logic reads.
_STATUS = ("status",)
REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Bundle", "type"): frozenset(
        {
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
            "subscription-notification",
        }
    ),
    ("Observation", "status"): frozenset(
        {
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("DiagnosticReport", "status"): frozenset(
        {
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("Encounter", "status"): frozenset(
        {
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
    ("MedicationRequest", "status"): frozenset(
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}
    ),
    ("MedicationRequest", "intent"): frozenset(
        {
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),
    ("Procedure", "status"): frozenset(
        {
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        }
    ),
    ("Immunization", "status"): frozenset({"completed", "entered-in-error", "not-done"}),
    ("DocumentReference", "status"): frozenset({"current", "superseded", "entered-in-error"}),
    ("DocumentReference", "docStatus"): frozenset({"preliminary", "final", "amended", "entered-in-error"}),
    ("ServiceRequest", "status"): frozenset(
        {"draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"}
    ),
    ("AllergyIntolerance", "criticality"): frozenset({"low", "high", "unable-to-assess"}),
}


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue."""

    code: IssueCode
    diagnostics: str
    expression: tuple[str, ...] = ()
    severity: Literal["fatal", "error", "warning", "information"] = "error"


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource (JSON) for the issues."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": i.severity,
                "code": i.code,
                "diagnostics": i.diagnostics,
                **({"expression": list(i.expression)} if i.expression else {}),
            }
            for i in issues
        ],
    }


LANE_HEADER = "X-Clinstream-Lane"
"""Request header naming the lane of what a request writes: ``backfill`` for history
(`clinstream backfill` sends it), ``live`` or absent for everything else."""


def lane_of(value: str | None) -> Lane:
    """The lane a ``LANE_HEADER`` value names.

    Raises:
        FhirInputError: 400 for any other value.
    """
    name = (value or "live").strip().lower()
    if name == "live":
        return "live"
    if name == "backfill":
        return "backfill"
    raise FhirInputError(400, [Issue("value", f"{LANE_HEADER} must be live or backfill")])


def parse_json(body: bytes) -> dict[str, Any]:
    """The JSON object in a request body.

    Raises:
        FhirInputError: 400 when the body is not a JSON object.
    """
    try:
        data = json.loads(body.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FhirInputError(400, [Issue("structure", "body is not valid JSON")]) from exc
    if not isinstance(data, dict):
        raise FhirInputError(400, [Issue("structure", "body is not a JSON object")])
    return data


def _model(resource_type: object) -> Any:
    if not isinstance(resource_type, str) or not resource_type:
        raise FhirInputError(400, [Issue("required", "resourceType is missing", ("resourceType",))])
    try:
        return model_class(resource_type)
    except (ValueError, KeyError) as exc:
        raise FhirInputError(
            400,
            [Issue("not-supported", f"{resource_type[:64]} is not an R4 resource type", ("resourceType",))],
        ) from exc


def _issues(exc: ValidationError, resource_type: str, prefix: str = "") -> list[Issue]:
    out = []
    for err in exc.errors()[:20]:
        path = ".".join(str(p) for p in err["loc"] if p != "__root__")
        where = f"{prefix}{resource_type}.{path}" if path else f"{prefix}{resource_type}"
        code: IssueCode = (
            "required"
            if err["type"] == "missing"
            else ("structure" if err["type"] == "extra_forbidden" else "value")
        )
        out.append(Issue(code, f"{where}: {err['type'].replace('_', ' ')}", (where,)))
    return out


def validate_resource(
    data: dict[str, Any],
    *,
    expected_type: str | None = None,
    expected_id: str | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """Validate one resource with fhir.resources (R4B) and return its canonical JSON.

    Raises:
        FhirInputError: 400 for unreadable or invalid content, or a type/id that contradicts the URL.
    """
    resource_type = data.get("resourceType")
    if expected_type is not None and resource_type != expected_type:
        raise FhirInputError(
            400,
            [Issue("invalid", f"resourceType does not match the URL ({expected_type})", ("resourceType",))],
        )
    model = _model(resource_type)
    if expected_id is not None and data.get("id") != expected_id:
        raise FhirInputError(
            400, [Issue("invalid", "resource id does not match the URL", (f"{resource_type}.id",))]
        )
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise FhirInputError(400, _issues(exc, str(resource_type), prefix)) from None
    except (ValueError, TypeError) as exc:
        raise FhirInputError(
            400, [Issue("structure", f"{prefix}{resource_type}: {type(exc).__name__}")]
        ) from None
    dumped: dict[str, Any] = parsed.model_dump(mode="json", exclude_none=True, by_alias=True)
    issues = check_codes(dumped, prefix) + check_references(dumped, prefix)
    if issues:
        raise FhirInputError(400, issues)
    return dumped


def check_codes(resource: dict[str, Any], prefix: str = "") -> list[Issue]:
    """Values outside a required binding (e.g. Observation.status), which the models let through."""
    rtype = str(resource.get("resourceType"))
    out = []
    for (type_, element), allowed in REQUIRED_CODES.items():
        if type_ == rtype and element in resource and resource[element] not in allowed:
            where = f"{prefix}{rtype}.{element}"
            out.append(Issue("value", f"{where}: not a code of its required value set", (where,)))
    return out


def check_references(resource: dict[str, Any], prefix: str = "") -> list[Issue]:
    """References whose target type is not a FHIR resource type (``Patientt/123``)."""
    out: list[Issue] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                m = _REFERENCE_TYPE.match(ref)
                if m and not _is_resource_type(m[1]):
                    out.append(
                        Issue(
                            "value",
                            f"{path}.reference: unknown resource type in reference",
                            (f"{path}.reference",),
                        )
                    )
            for key, value in node.items():
                if key != "contained":
                    walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(resource, f"{prefix}{resource.get('resourceType')}")
    return out[:20]


def _is_resource_type(name: str) -> bool:
    try:
        model_class(name)
    except (ValueError, KeyError):
        return False
    return True


def assign_id(resource: dict[str, Any], raw: bytes) -> dict[str, Any]:
    """Give a POSTed resource without id a deterministic one (same body → same id)."""
    if resource.get("id"):
        return resource
    return {**resource, "id": deterministic_id("FhirCreate", str(resource["resourceType"]), raw.hex())}


def patient_ref(resource: dict[str, Any]) -> str | None:
    """``Patient/<id>`` the resource is about, when it says so."""
    if resource.get("resourceType") == "Patient" and resource.get("id"):
        return f"Patient/{resource['id']}"
    for element in _PATIENT_ELEMENTS:
        ref = resource.get(element)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            value: str = ref["reference"]
            if value.startswith(("Patient/", "urn:uuid:")) or "/Patient/" in value:
                return value
    return None


def record_key(patient: str | None, source: str) -> str:
    """Kafka key of a FHIR record: one per patient reference, else per source system."""
    return deterministic_id("FhirPatient", patient) if patient else deterministic_id("Sender", source)


@dataclass
class BundleResult:
    """A validated Bundle: which entries are good, and the response entries to return."""

    bundle_type: str
    resources: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)  # entry indexes whose resource is valid
    rejected: dict[int, list[Issue]] = field(default_factory=dict)
    full_urls: list[str | None] = field(default_factory=list)  # of the accepted entries


def validate_bundle(data: dict[str, Any]) -> BundleResult:
    """Validate a batch or transaction Bundle entry by entry.

    Raises:
        FhirInputError: 400 when the Bundle itself is unusable, or when a transaction has
            any invalid entry (a transaction is all or nothing).
    """
    if data.get("resourceType") != "Bundle":
        raise FhirInputError(400, [Issue("invalid", "POST /fhir expects a Bundle", ("resourceType",))])
    bundle_type = data.get("type")
    if bundle_type not in ("batch", "transaction"):
        raise FhirInputError(
            400, [Issue("value", "Bundle.type must be batch or transaction", ("Bundle.type",))]
        )
    entries = data.get("entry") or []
    if not isinstance(entries, list):
        raise FhirInputError(400, [Issue("structure", "Bundle.entry is not a list", ("Bundle.entry",))])
    result = BundleResult(str(bundle_type))
    for n, entry in enumerate(entries):
        prefix = f"Bundle.entry[{n}].resource."
        resource = entry.get("resource") if isinstance(entry, dict) else None
        request = entry.get("request") if isinstance(entry, dict) else None
        method = (request.get("method") if isinstance(request, dict) else None) or "PUT"
        try:
            if method not in ("POST", "PUT"):
                raise FhirInputError(
                    400,
                    [
                        Issue(
                            "not-supported",
                            f"{str(method)[:8]} entries are not accepted (write-only endpoint)",
                            (f"Bundle.entry[{n}].request.method",),
                        )
                    ],
                )
            if not isinstance(resource, dict):
                raise FhirInputError(
                    400, [Issue("required", "entry has no resource", (f"Bundle.entry[{n}]",))]
                )
            result.resources.append(validate_resource(resource, prefix=prefix))
            result.accepted.append(n)
            full_url = entry.get("fullUrl")
            result.full_urls.append(full_url if isinstance(full_url, str) else None)
        except FhirInputError as exc:
            result.rejected[n] = exc.issues
    if bundle_type == "transaction":
        full_urls = {u for e in entries if isinstance(e, dict) and isinstance(u := e.get("fullUrl"), str)}
        for n, resource in zip(result.accepted, result.resources, strict=True):
            dangling = [r for r in _uuid_references(resource) if r not in full_urls]
            if dangling:
                result.rejected[n] = [
                    Issue(
                        "not-found",
                        "urn:uuid reference not resolvable in this transaction",
                        (f"Bundle.entry[{n}].resource",),
                    )
                ]
        if result.rejected:
            raise FhirInputError(400, [i for issues in result.rejected.values() for i in issues])
    return result


def _uuid_references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if str(node.get("reference", "")).startswith("urn:uuid:") else []
        return found + [r for v in node.values() for r in _uuid_references(v)]
    if isinstance(node, list):
        return [r for item in node for r in _uuid_references(item)]
    return []


def bundle_response(result: BundleResult, locations: dict[int, str]) -> dict[str, Any]:
    """The batch-response / transaction-response Bundle, one entry per request entry."""
    total = len(result.accepted) + len(result.rejected)
    entries = []
    for n in range(total):
        if n in result.rejected:
            entries.append(
                {"response": {"status": "400 Bad Request", "outcome": operation_outcome(result.rejected[n])}}
            )
        else:
            entries.append({"response": {"status": "200 OK", "location": locations[n]}})
    return {"resourceType": "Bundle", "type": f"{result.bundle_type}-response", "entry": entries}


NotificationType = Literal["handshake", "heartbeat", "event-notification", "query-status", "query-event"]


@dataclass(frozen=True)
class Notification:
    """A topic-based Subscription notification (R4B SubscriptionStatus or the R4 backport)."""

    type: NotificationType
    subscription: str
    resources: list[dict[str, Any]]
    references: list[str]  # id-only notifications: what the EHR says changed


def read_notification(data: dict[str, Any]) -> Notification:
    """Read a notification Bundle: first entry the status, then the focus resources.

    Accepts the R4B form (SubscriptionStatus) and the R4 backport form (Parameters).

    Raises:
        FhirInputError: 400 when it is not a notification Bundle.
    """
    if data.get("resourceType") != "Bundle" or data.get("type") not in (
        "history",
        "subscription-notification",
    ):
        raise FhirInputError(
            400, [Issue("invalid", "a notification is a Bundle of type history or subscription-notification")]
        )
    entries = [e for e in data.get("entry") or [] if isinstance(e, dict)]
    status = entries[0].get("resource") if entries else None
    if not isinstance(status, dict) or status.get("resourceType") not in ("SubscriptionStatus", "Parameters"):
        raise FhirInputError(
            400,
            [
                Issue(
                    "required",
                    "the first entry must be a SubscriptionStatus or Parameters",
                    ("Bundle.entry[0]",),
                )
            ],
        )
    if status["resourceType"] == "SubscriptionStatus":
        kind = status.get("type")
        subscription = str((status.get("subscription") or {}).get("reference", ""))
    else:
        params = {p.get("name"): p for p in status.get("parameter", []) if isinstance(p, dict)}
        kind = (params.get("type") or {}).get("valueCode")
        subscription = str(
            ((params.get("subscription") or {}).get("valueReference") or {}).get("reference", "")
        )
    if kind not in ("handshake", "heartbeat", "event-notification", "query-status", "query-event"):
        raise FhirInputError(
            400, [Issue("value", "unknown notification type", ("Bundle.entry[0].resource",))]
        )
    resources: list[dict[str, Any]] = []
    references: list[str] = []
    for n, entry in enumerate(entries[1:], start=1):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            resources.append(validate_resource(resource, prefix=f"Bundle.entry[{n}].resource."))
        elif isinstance(entry.get("fullUrl"), str):
            references.append(entry["fullUrl"])
    return Notification(kind, subscription, resources, references)


def capability_statement(base_url: str, *, now: datetime, version: str) -> dict[str, Any]:
    """What this endpoint accepts (GET /fhir/metadata)."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now.date().isoformat(),
        "kind": "instance",
        "software": {"name": "clinstream", "version": version},
        "implementation": {"description": "clinstream FHIR ingress (write-only)", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "description": "Bearer token or JWT in the Authorization header",
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "OAuth",
                                }
                            ]
                        }
                    ],
                },
                "resource": [{"type": "Resource", "interaction": [{"code": "create"}, {"code": "update"}]}],
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
                "operation": [
                    {
                        "name": "subscription-notification",
                        "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
                    }
                ],
            }
        ],
    }
