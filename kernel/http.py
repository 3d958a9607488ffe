"""The JSON error body every stage's HTTP routes answer with (RFC 9457 style): status and a
detail that never echoes the request (no patient data from a body ends up in an error)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


def problem(status: int, detail: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """``{"status", "detail"}`` with ``status`` as the HTTP status."""
    return JSONResponse({"status": status, "detail": detail}, status_code=status, headers=headers)
