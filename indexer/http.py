"""HTTP routes of the contextual query (`POST /query`), mounted by the API server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from indexer.errors import VectorStoreError
from indexer.query import DEFAULT_MODE, ContextualQuery, Hit, KnowledgeHit, SearchMode
from kernel.access import TOKEN, read
from kernel.http import Guarded, disclose, patient_of, problem, search_types
from kernel.openapi import operation, path_param, query_param
from kernel.rendering import INDEXED_TYPES

Body = TypeVar("Body", bound=BaseModel)
INDEXED_READ = read(*INDEXED_TYPES)
"""The record routes: a caller who may read some indexed type; they search only those."""


@dataclass(frozen=True, slots=True)
class CollectionStats:
    """One collection as `GET /index/stats` reports it."""

    name: str
    rows: int
    embedding: str


FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]


class QueryRequest(BaseModel):
    """Body of `POST /query`."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="FHIR Patient id, or `authority|identifier` (e.g. `HOSP|12345`)."
    )
    question: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    k: int = Field(default=5, ge=1, le=50)
    types: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{1,64}$")]] = Field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    mode: SearchMode = Field(
        default=DEFAULT_MODE, description="dense (the default), bm25, or hybrid (dense + BM25, rank-fused)."
    )


class KnowledgeRequest(BaseModel):
    """Body of `POST /knowledge/query`."""

    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    k: int = Field(default=5, ge=1, le=50)
    mode: SearchMode = DEFAULT_MODE


class ContextRequest(QueryRequest):
    """Body of `POST /context`: a record query plus knowledge passages for the same question."""

    knowledge_k: int = Field(default=3, ge=0, le=20)


def _hit(h: Hit) -> dict[str, object]:
    return {
        "resource_id": h.resource_id,
        "resource_type": h.resource_type,
        "text": h.text,
        "score": round(h.score, 6),
        "date": h.date,
    }


def _passage(h: KnowledgeHit) -> dict[str, object]:
    return {
        "source": h.source,
        "title": h.title,
        "section": h.section,
        "citation": h.citation,
        "text": h.text,
        "score": round(h.score, 6),
    }


def _invalid(exc: ValidationError) -> JSONResponse:
    fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
    return problem(422, f"invalid fields: {', '.join(fields)}")


class TimelineParams(BaseModel):
    """Query string of `GET /patients/{id}/timeline`."""

    model_config = ConfigDict(extra="forbid")

    types: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{1,64}$")]] = Field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=200, ge=1, le=1000)


def _record_hits(
    query: ContextualQuery, body: QueryRequest, patient: str, types: list[str] | None
) -> list[Hit]:
    """The search, with the caller's readable types as its filter (None: nothing to search)."""
    if types is None:
        return []
    return query.search(
        patient,
        body.question,
        k=body.k,
        types=types,
        since=body.since,
        until=body.until,
        mode=body.mode,
    )


def _searched(request: Request, query: ContextualQuery, body: QueryRequest) -> Callable[[], list[Hit]]:
    """The record search this caller may run (its patient and types), ready for a thread; the
    hits it returns are named for the AuditEvent."""
    patient = patient_of(request, body.patient_id)
    types = search_types(request, body.types, INDEXED_TYPES)

    def run() -> list[Hit]:
        hits = _record_hits(query, body, patient, types)
        disclose(request, patient, (h.resource_id for h in hits))
        return hits

    return run


def _unavailable() -> JSONResponse:
    """503 while Milvus is unreachable."""
    return problem(503, "index unavailable, retry later")


async def _body(request: Request, model: type[Body]) -> Body | JSONResponse:
    """The request's JSON body as ``model``, or the 400/422 answer."""
    try:
        return model.model_validate(json.loads(await request.body()))
    except (json.JSONDecodeError, UnicodeDecodeError):  # json.loads(bytes) decodes first
        return problem(400, "body is not valid JSON")
    except ValidationError as exc:
        return _invalid(exc)


def query_routes(
    query: ContextualQuery, stats: Callable[[], Sequence[CollectionStats]] | None = None
) -> list[Guarded]:
    """Routes served for the indexer; ``stats`` (row counts, run in a thread) serves
    `GET /index/stats`, the ops dashboard's Index page."""

    async def get_stats(_: Request) -> JSONResponse:
        if stats is None:
            return problem(404, "index statistics are not served here")
        try:
            found = await asyncio.to_thread(stats)
        except VectorStoreError:
            return _unavailable()
        return JSONResponse({"collections": [asdict(c) for c in found]})

    async def post_query(request: Request) -> JSONResponse:
        body = await _body(request, QueryRequest)
        if isinstance(body, JSONResponse):
            return body
        search = _searched(request, query, body)
        try:
            hits = await asyncio.to_thread(search)
        except VectorStoreError:
            return _unavailable()
        return JSONResponse({"results": [_hit(h) for h in hits]})

    async def post_knowledge(request: Request) -> JSONResponse:
        body = await _body(request, KnowledgeRequest)
        if isinstance(body, JSONResponse):
            return body
        try:
            passages = await asyncio.to_thread(query.knowledge, body.question, k=body.k, mode=body.mode)
        except VectorStoreError:
            return _unavailable()
        return JSONResponse({"results": [_passage(p) for p in passages]})

    async def post_context(request: Request) -> JSONResponse:
        body = await _body(request, ContextRequest)
        if isinstance(body, JSONResponse):
            return body
        search = _searched(request, query, body)
        try:
            hits = await asyncio.to_thread(search)
            passages = (
                await asyncio.to_thread(query.knowledge, body.question, k=body.knowledge_k, mode=body.mode)
                if body.knowledge_k
                else []
            )
        except VectorStoreError:
            return _unavailable()
        return JSONResponse({"record": [_hit(h) for h in hits], "knowledge": [_passage(p) for p in passages]})

    async def get_timeline(request: Request) -> JSONResponse:
        raw = request.path_params["patient"]
        if not 1 <= len(raw) <= 256:
            return problem(422, "invalid fields: patient")
        try:
            params = TimelineParams.model_validate(
                {
                    "types": request.query_params.getlist("type"),
                    **{k: v for k, v in request.query_params.items() if k != "type"},
                }
            )
        except ValidationError as exc:
            return _invalid(exc)
        patient = patient_of(request, raw)
        types = search_types(request, params.types, INDEXED_TYPES)
        try:
            entries = (
                []
                if types is None
                else await asyncio.to_thread(
                    query.timeline,
                    patient,
                    types=types,
                    since=params.since,
                    until=params.until,
                    limit=params.limit,
                )
            )
        except VectorStoreError:
            return _unavailable()
        disclose(request, patient, (e.resource_id for e in entries))
        return JSONResponse(
            {
                "entries": [
                    {
                        "resource_id": e.resource_id,
                        "resource_type": e.resource_type,
                        "text": e.text,
                        "date": e.date,
                    }
                    for e in entries
                ]
            }
        )

    return [
        Guarded("/query", post_query, methods=["POST"], need=INDEXED_READ),
        Guarded("/knowledge/query", post_knowledge, methods=["POST"], need=TOKEN),
        Guarded("/context", post_context, methods=["POST"], need=INDEXED_READ),
        Guarded("/patients/{patient:path}/timeline", get_timeline, methods=["GET"], need=INDEXED_READ),
        Guarded("/index/stats", get_stats, methods=["GET"], need=TOKEN),
    ]


def openapi_paths() -> dict[str, dict[str, Any]]:
    """The query API's operations (OpenAPI)."""
    day = {"type": "string", "format": "date-time"}
    errors = ("401", "422", "503")
    return {
        "/query": {
            "post": operation("Patient-scoped search with citations.", body=QueryRequest, errors=errors)
        },
        "/knowledge/query": {
            "post": operation("Knowledge-base search.", body=KnowledgeRequest, errors=errors)
        },
        "/context": {
            "post": operation(
                "Record hits and knowledge passages for one question.", body=ContextRequest, errors=errors
            )
        },
        "/patients/{patient}/timeline": {
            "get": operation(
                "A patient's indexed record in time order.",
                params=[
                    path_param("patient"),
                    query_param("type", {"type": "string", "pattern": "^[A-Za-z]{1,64}$"}, repeated=True),
                    query_param("since", day),
                    query_param("until", day),
                    query_param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                errors=errors,
            )
        },
        "/index/stats": {
            "get": operation("Collections, row counts and the embedding model.", errors=("401", "503"))
        },
    }
