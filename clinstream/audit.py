"""Reading the audit log: `GET /audit/events` and `clinstream audit` (who accessed what, and
whether the hash chains hold).

`GET /audit/events?patient=ID[&since=ISO-8601]` needs the audit scope (``system/AuditEvent.rs``;
the static service token has it by default) and answers ``{"events": [{"time", "principal",
"action", "patient", "resources", "outcome"}]}``, oldest first. It reads the one partition the
patient's events go to, from ``since`` when given (Kafka finds that offset by time). Reading a
patient's audit trail is itself audited.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from kernel.access import AUDIT
from kernel.audit import summary
from kernel.audit_kafka import events_of, read_partitions
from kernel.errors import AuditUnavailableError
from kernel.http import Guarded, disclose, patient_of, problem
from kernel.openapi import operation, query_param


class AuditQuery(BaseModel):
    """The query string of `GET /audit/events`."""

    model_config = ConfigDict(extra="forbid")

    patient: str
    since: datetime | None = None


async def patient_events(
    bootstrap: str,
    topic: str,
    patient: str,
    since: datetime | None = None,
    security: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The summaries of every AuditEvent about ``patient`` (a stream key), oldest first."""
    records = await read_partitions(bootstrap, topic, key=patient.encode(), since=since, security=security)
    found = [summary(e) for e in events_of(records)]
    return [e for e in found if e["patient"] == patient]


def audit_routes(bootstrap: str, topic: str, security: Mapping[str, Any] | None = None) -> list[Guarded]:
    """`GET /audit/events`."""

    async def events(request: Request) -> JSONResponse:
        try:
            query = AuditQuery.model_validate(dict(request.query_params))
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
            return problem(422, f"invalid fields: {', '.join(fields)}")
        if not 1 <= len(query.patient) <= 256:
            return problem(422, "invalid fields: patient")
        key = patient_of(request, query.patient)
        try:
            found = await patient_events(bootstrap, topic, key, query.since, security)
        except AuditUnavailableError:
            return problem(503, "the audit log is unavailable; retry later", {"Retry-After": "5"})
        disclose(request, key, ())
        return JSONResponse({"events": found})

    return [Guarded("/audit/events", events, methods=["GET"], need=AUDIT)]


def openapi_paths() -> dict[str, dict[str, Any]]:
    """The audit log's read (OpenAPI)."""
    return {
        "/audit/events": {
            "get": operation(
                "Who accessed a patient's data: the AuditEvents about one patient, oldest first "
                "(needs system/AuditEvent.rs).",
                params=[
                    {"name": "patient", "in": "query", "required": True, "schema": {"type": "string"}},
                    query_param("since", {"type": "string", "format": "date-time"}),
                ],
                errors=("401", "403", "422", "503"),
            )
        }
    }


def dumps(rows: list[dict[str, Any]]) -> str:
    """One line of JSON per event (`clinstream audit --patient`)."""
    return "\n".join(json.dumps(r, sort_keys=True) for r in rows)
