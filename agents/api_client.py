"""The tools' backend: the deployment's own HTTP API (query, timeline, knowledge, alerts, drafts).

The agent gateway holds the service token; what an agent may ask was decided before a call
gets here (`agents.http`). Calling the API over HTTP keeps this stage apart from the others
(the query API is the one stage-to-stage call the design allows), so the gateway can run in
its own process.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from agents.errors import ToolError
from agents.tools import (
    AlertsArgs,
    AskArgs,
    AssistArgs,
    DraftArgs,
    KnowledgeArgs,
    SearchRecordArgs,
    TimelineArgs,
)


class ApiBackend:
    """Answers tool calls through ``client`` (base URL and service token set on it).

    ``inference`` reaches the alerts and drafts routes when the inference stage runs in
    another process than the query API (`clinstream run`); else ``client`` serves them too.
    """

    def __init__(self, client: httpx.AsyncClient, inference: httpx.AsyncClient | None = None) -> None:
        self._http = client
        self._inference = inference or client

    async def _send(
        self, method: str, path: str, *, inference: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        client = self._inference if inference else self._http
        try:
            response = await client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ToolError(503, f"the query API is unreachable ({type(exc).__name__})") from None
        if response.status_code >= 500:
            raise ToolError(503, "the query API is unavailable; retry later")
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail", "refused"))
            except ValueError:
                detail = "refused"
            raise ToolError(response.status_code if response.status_code in (404, 409, 422) else 502, detail)
        body: dict[str, Any] = response.json()
        return body

    async def call(self, tool: str, args: BaseModel, patient: str | None) -> dict[str, Any]:
        """The tool's answer: ``{"results": [...]}``, ``{"answer": {...}}`` for ask_about_patient,
        or ``{"draft": {...}}`` for draft_note."""
        if isinstance(args, SearchRecordArgs):
            body = args.model_dump(mode="json", exclude={"patient_id"}, exclude_none=True)
            found = await self._send("POST", "/query", json={"patient_id": patient, **body})
            return {"results": found["results"]}
        if isinstance(args, TimelineArgs):
            params: list[tuple[str, str | int]] = [("type", t) for t in args.types]
            params += [("limit", args.limit)]
            params += [(k, v.isoformat()) for k, v in (("since", args.since), ("until", args.until)) if v]
            found = await self._send(
                "GET", f"/patients/{quote(str(patient), safe='')}/timeline", params=params
            )
            return {"results": found["entries"]}
        if isinstance(args, KnowledgeArgs):
            found = await self._send("POST", "/knowledge/query", json=args.model_dump(mode="json"))
            return {"results": found["results"]}
        if isinstance(args, AlertsArgs):
            found = await self._send("GET", f"/cds/alerts/{quote(str(patient), safe='')}", inference=True)
            return {"results": found["alerts"]}
        if isinstance(args, AssistArgs):
            route = "/assist/diagnoses" if tool == "suggest_diagnoses" else "/assist/treatments"
            found = await self._send("POST", route, inference=True, json={"patient_id": patient})
            return {"results": found["suggestions"]}
        if isinstance(args, AskArgs):
            body = {"patient_id": patient, "question": args.question}
            return {"answer": await self._send("POST", "/assist/ask", inference=True, json=body)}
        if isinstance(args, DraftArgs):
            payload = {"patient_id": patient, "type": args.type}
            if args.anchor:
                payload["anchor"] = args.anchor
            return {"draft": await self._send("POST", "/notes/drafts", inference=True, json=payload)}
        raise ToolError(404, f"no backend for {tool}")
