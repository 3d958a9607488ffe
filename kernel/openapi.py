"""OpenAPI 3.1 descriptions of the HTTP services: small builders each stage uses to describe its
routes next to them, and the document an API server publishes at `/openapi.json`.

Pure: request bodies come from the stages' pydantic models (their JSON schema), errors are the
shared shapes (a problem `{status, detail}`, or a FHIR OperationOutcome under /fhir and /dicom).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel

PROBLEM = {
    "type": "object",
    "required": ["status", "detail"],
    "properties": {"status": {"type": "integer"}, "detail": {"type": "string"}},
}
OUTCOME = {
    "type": "object",
    "required": ["resourceType", "issue"],
    "properties": {"resourceType": {"const": "OperationOutcome"}, "issue": {"type": "array"}},
}
FHIR_RESOURCE = {
    "type": "object",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"}},
}
REASONS = {
    "400": "Unreadable body.",
    "401": "Missing or invalid credentials.",
    "403": "Not allowed for these credentials.",
    "404": "Not found.",
    "409": "Conflicts with the current state.",
    "412": "A precondition (prefetch, FHIR server) is missing.",
    "413": "Body too large.",
    "415": "Unsupported media type.",
    "422": "Invalid fields.",
    "503": "A dependency (Kafka, Milvus) is unavailable; retry later.",
}


def _schema(body: type[BaseModel] | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(body, type):
        return body.model_json_schema(ref_template="#/components/schemas/{model}")
    return dict(body)


def operation(
    summary: str,
    *,
    body: type[BaseModel] | Mapping[str, Any] | None = None,
    media: Sequence[str] = ("application/json",),
    params: Sequence[Mapping[str, Any]] = (),
    ok: str = "200",
    errors: Sequence[str] = ("401", "422"),
    error_schema: Mapping[str, Any] = PROBLEM,
    secured: bool = True,
) -> dict[str, Any]:
    """One operation: its body schema (a model or a JSON schema), parameters and answers."""
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            ok: {"description": "Done."},
            **{
                code: {
                    "description": REASONS[code],
                    "content": {"application/json": {"schema": dict(error_schema)}},
                }
                for code in errors
            },
        },
    }
    if secured:
        op["security"] = [{"bearer": []}]
    if params:
        op["parameters"] = [dict(p) for p in params]
    if body is not None:
        schema = _schema(body)
        op["requestBody"] = {"required": True, "content": {m: {"schema": schema} for m in media}}
    return op


def path_param(name: str, pattern: str | None = None) -> dict[str, Any]:
    """A required path parameter (a string, matching ``pattern`` when given)."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def query_param(name: str, schema: Mapping[str, Any], *, repeated: bool = False) -> dict[str, Any]:
    """An optional query parameter (``repeated``: may be given several times)."""
    if repeated:
        return {
            "name": name,
            "in": "query",
            "schema": {"type": "array", "items": dict(schema)},
            "explode": True,
        }
    return {"name": name, "in": "query", "schema": dict(schema)}


def document(title: str, paths: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of one server; model schemas referenced by the bodies are
    gathered under components."""
    components: dict[str, Any] = {}
    out_paths: dict[str, Any] = {}
    for path, ops in paths.items():
        out_paths[path] = {}
        for method, op in ops.items():
            op = dict(op)
            body = op.get("requestBody")
            if body:
                for content in body["content"].values():
                    defs = content["schema"].pop("$defs", None)
                    if defs:
                        components.update(defs)
            out_paths[path][method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
        "paths": out_paths,
    }
