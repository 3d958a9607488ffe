"""The local code mapping assistant's API.

- `GET /terminology/unmapped[?limit=N]`: the observation codes decision support does not know,
  per sending system, most seen first, each with its units, value range and suggested LOINC
  codes (``{"codes": [...]}``). Needs ``ConceptMap`` read (``system/ConceptMap.rs``).
- `GET /terminology/mappings`: every confirmed mapping with its versions, and the state of each
  re-run. Needs ``ConceptMap`` read.
- `POST /terminology/mappings`: confirm a mapping (``{"sender", "system", "code", "loinc",
  "analyte"?, "display"?, "rerun"?}``). It is written to `terminology.mappings.v1` (acks=all) and
  answered once this instance's rules read it; the others read it within their reader's lag.
  ``"rerun": true`` then sends the code's history through decision support again, in the
  background (its progress is in `GET /terminology/mappings`). Needs ``ConceptMap`` write
  (``system/ConceptMap.cu``): a mapping changes what decision support alerts on.

Counts, codes and value ranges are not patient data; the routes read no patient's record. The
re-run is attributed in the log to the principal who asked for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from inference.cds.terminology import CodeMapping, MappingError, confirm, suggest
from inference.cds.terminology_store import TerminologyStore
from kernel.access import read, write
from kernel.http import Guarded, caller, problem
from kernel.kafka import Outgoing, Written
from kernel.openapi import operation, query_param

log = logging.getLogger(__name__)
CONCEPT_MAP = "ConceptMap"

Publish = Callable[[list[Outgoing]], Awaitable[list[Written]]]
CaughtUp = Callable[[], Awaitable[object]]
Rerun = Callable[[CodeMapping, Callable[[int, int], None]], Awaitable[int]]


class MappingRequest(BaseModel):
    """The body of `POST /terminology/mappings`."""

    model_config = ConfigDict(extra="forbid")

    sender: str = Field(min_length=1, max_length=256, description="The sending system, or * for all.")
    system: str = Field(default="", max_length=512)
    code: str = Field(min_length=1, max_length=256)
    loinc: str = Field(min_length=3, max_length=10)
    analyte: str | None = Field(default=None, max_length=64)
    display: str = Field(default="", max_length=512)
    rerun: bool = Field(default=False, description="Send the code's history through decision support again.")
    on_behalf_of: str = Field(default="", max_length=128, description="The person a service confirms it for.")


class Terminology:
    """The routes, over a store, a way to publish a mapping and a way to re-run history."""

    def __init__(
        self,
        store: TerminologyStore,
        topic: str,
        publish: Publish,
        caught_up: CaughtUp,
        rerun: Rerun,
    ) -> None:
        self._store = store
        self._topic = topic
        self._publish = publish
        self._caught_up = caught_up
        self._rerun = rerun
        self.reruns: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self) -> list[Guarded]:
        """The three routes."""
        return [
            Guarded("/terminology/unmapped", self.unmapped, methods=["GET"], need=read(CONCEPT_MAP)),
            Guarded("/terminology/mappings", self.mappings, methods=["GET"], need=read(CONCEPT_MAP)),
            Guarded("/terminology/mappings", self.confirm, methods=["POST"], need=write(CONCEPT_MAP)),
        ]

    async def unmapped(self, request: Request) -> JSONResponse:
        """GET /terminology/unmapped."""
        raw = request.query_params.get("limit", "200")
        if not raw.isdigit() or not 1 <= int(raw) <= 5000:
            return problem(422, "invalid fields: limit")
        codes = await asyncio.to_thread(self._store.unmapped_codes)
        return JSONResponse(
            {
                "codes": [
                    {
                        **c.model_dump(mode="json"),
                        "suggestions": [s.model_dump(mode="json") for s in suggest(c)],
                    }
                    for c in codes[: int(raw)]
                ]
            }
        )

    async def mappings(self, request: Request) -> JSONResponse:
        """GET /terminology/mappings."""
        found = await asyncio.to_thread(self._store.all_mappings)
        return JSONResponse(
            {
                "mappings": [
                    {**m.model_dump(mode="json"), "rerun": self.reruns.get(m.key)}
                    for m in sorted(found, key=lambda m: m.key)
                ]
            }
        )

    async def confirm(self, request: Request) -> JSONResponse:
        """POST /terminology/mappings."""
        try:
            body = MappingRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "body" for e in exc.errors()})
            return problem(422, f"invalid fields: {', '.join(fields)}")
        access = caller(request)
        by = access.principal if access else "unknown"
        previous = self._store.mapping(body.sender, body.system, body.code)
        try:
            mapping = confirm(
                previous,
                sender=body.sender,
                system=body.system,
                code=body.code,
                loinc=body.loinc,
                analyte=body.analyte,
                display=body.display,
                on_behalf_of=body.on_behalf_of,
                by=by,
                at=datetime.now(UTC),
            )
        except MappingError as exc:
            return problem(422, str(exc))
        value = mapping.model_dump_json().encode()
        await self._publish([Outgoing(self._topic, value, mapping.key.encode(), {})])
        try:
            await self._caught_up()  # this instance's rules read it before the answer
        except TimeoutError:  # written (acks=all): the reader applies it when it gets there
            log.warning(
                "code mapping v%d written; this instance has not read it back yet", mapping.current.version
            )
        log.info(
            "code mapping v%d confirmed by %s (analyte %s)",
            mapping.current.version,
            by,
            mapping.current.analyte or "-",
        )
        answer: dict[str, Any] = {"mapping": mapping.model_dump(mode="json")}
        if body.rerun:
            answer["rerun"] = self._start_rerun(mapping, by)
        return JSONResponse(answer)

    def _start_rerun(self, mapping: CodeMapping, by: str) -> dict[str, Any]:
        status: dict[str, Any] = {
            "state": "running",
            "version": mapping.current.version,
            "by": by,
            "read": 0,
            "sent": 0,
        }
        self.reruns[mapping.key] = status

        def progress(read_: int, sent: int) -> None:
            status.update(read=read_, sent=sent)

        async def run() -> None:
            try:
                await self._rerun(mapping, progress)
                status["state"] = "done"
            except Exception as exc:  # reported on the mappings route; the mapping itself stands
                log.warning("code mapping re-run failed: %s", type(exc).__name__)
                status.update(state="failed", error=type(exc).__name__)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return status


def openapi_paths() -> dict[str, dict[str, Any]]:
    """The mapping assistant's routes (OpenAPI)."""
    return {
        "/terminology/unmapped": {
            "get": operation(
                "Observation codes decision support does not know, per sender, with suggested LOINC codes "
                "(needs system/ConceptMap.rs).",
                params=[query_param("limit", {"type": "integer", "minimum": 1, "maximum": 5000})],
                errors=("401", "403", "422"),
            )
        },
        "/terminology/mappings": {
            "get": operation(
                "Confirmed local code mappings with their versions and re-runs (needs system/ConceptMap.rs).",
                errors=("401", "403"),
            ),
            "post": operation(
                "Confirm a local code's mapping (a new version); optionally re-run decision support over "
                "its history (needs system/ConceptMap.cu).",
                body=MappingRequest,
                errors=("401", "403", "422"),
            ),
        },
    }
