"""The agent tools over HTTP: `GET /agent/tools`, `GET /agent/openapi.json`, `POST /agent/tools/{name}`.

Each call is checked against the caller's patient scope before the backend is asked, and
recorded as a FHIR AuditEvent (published, acks=all) before the answer leaves: when the audit
log cannot be written, the caller gets 503 and no data.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from agents.errors import ToolError
from agents.tools import TOOLS, audit_event, disclosed_refs, openapi, patient_of, scope_of
from kernel.access import OWN, TOKEN
from kernel.http import Guarded, problem

log = logging.getLogger(__name__)
Audit = Callable[[dict[str, Any], str], Awaitable[None]]  # (AuditEvent, patient key or "")


class ToolBackend(Protocol):
    """Answers a tool call that has been authorised (the deployment's query API behind it)."""

    async def call(self, tool: str, args: BaseModel, patient: str | None) -> dict[str, Any]:
        """The answer to ``tool``; raises `ToolError` for a refusal the caller should see."""


def agent_routes(
    backend: ToolBackend, audit: Audit, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> list[Guarded]:
    """The routes, mounted behind the API server's bearer authentication; a tool call checks
    the token's patient scope itself and writes its own AuditEvent."""

    async def listing(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "tools": [
                    {"name": t.name, "description": t.description, "input_schema": t.input_schema()}
                    for t in TOOLS.values()
                ]
            }
        )

    async def spec(_: Request) -> JSONResponse:
        return JSONResponse(openapi())

    async def call(request: Request) -> JSONResponse:
        tool = TOOLS.get(str(request.path_params["name"]))
        if tool is None:
            return problem(404, "no such tool")
        try:
            raw = json.loads(await request.body() or b"{}")
            args = tool.args.model_validate(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):  # json.loads(bytes) decodes first
            return problem(400, "body is not valid JSON")
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
            return problem(422, f"invalid arguments: {', '.join(fields)}")
        principal = str(getattr(request.state, "principal", ""))
        claims: Mapping[str, Any] = getattr(request.state, "claims", {}) or {}
        patient = patient_of(args)
        trace_id = secrets.token_hex(16)

        async def record(
            outcome: Literal["allowed", "refused", "failed"], detail: str, refs: list[str]
        ) -> bool:
            event = audit_event(
                tool=tool.name,
                access=tool.access,
                principal=principal,
                patient=patient,
                arguments=args.model_dump(mode="json"),
                outcome=outcome,
                detail=detail,
                disclosed=refs,
                at=clock(),
                trace_id=trace_id,
                address=request.client.host if request.client else None,
            )
            try:
                await audit(event, patient or "")
            except Exception:  # the audit log is down: nothing may be disclosed
                log.exception("agent tools: the AuditEvent of a %s call could not be written", tool.name)
                return False
            return True

        refusal = scope_of(claims).allows(tool, patient)
        if refusal is not None:
            await record("refused", refusal, [])
            return problem(403, refusal)
        try:
            result = await backend.call(tool.name, args, patient)
        except ToolError as exc:
            await record("failed", exc.detail, [])
            return problem(exc.status, exc.detail)
        if not await record("allowed", "ok", disclosed_refs(result)):
            return problem(503, "the audit log is unavailable; retry later")
        return JSONResponse(result)

    return [
        Guarded("/agent/tools", listing, methods=["GET"], need=TOKEN),
        Guarded("/agent/openapi.json", spec, methods=["GET"], need=TOKEN),
        Guarded("/agent/tools/{name}", call, methods=["POST"], need=OWN),
    ]
