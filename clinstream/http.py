"""The HTTP API server: one Starlette app, bearer-token auth, routes contributed by stages.

Authentication happens here, for every path; what a caller may do is each route's `Need`
(`kernel.http.Guarded`), and `build_app` refuses a route that does not state one.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from connectors.fhir_ingress import Issue
from connectors.fhir_server import outcome_response
from connectors.security import Authenticator
from kernel.access import PUBLIC, TOKEN, access_of
from kernel.audit_kafka import AuditLog
from kernel.http import CHALLENGE, Guarded
from kernel.openapi import document, operation
from kernel.settings import HttpSettings

log = logging.getLogger(__name__)
PUBLIC_PATHS = frozenset({"/health", "/fhir/metadata"})
PATIENT_SCOPED_PREFIX = "/agent/"
"""A token that names patients (an agent's, `clinstream agent-token`) is good only here, where
each call is checked against its patients: elsewhere it could read any patient."""


class BearerAuth:
    """Every path but /health and /fhir/metadata needs a valid bearer token or JWT; a
    patient-scoped JWT only the agent tools (403 elsewhere).

    Paths under ``own_auth`` prefixes authenticate themselves (CDS Hooks verifies the EHR's
    JWT per call, with its own keys and audience). A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware ran every request through an extra task group.
    """

    def __init__(
        self, app: ASGIApp, authenticator: Authenticator, audit: AuditLog, own_auth: tuple[str, ...] = ()
    ) -> None:
        self._app = app
        self._auth = authenticator
        self._audit = audit
        self._own = own_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope["path"]
        state = scope.setdefault("state", {})
        state["audit_log"] = self._audit
        if path in PUBLIC_PATHS or any(path == p or path.startswith(p + "/") for p in self._own):
            await self._app(scope, receive, send)
            return
        found = self._auth.authenticate(Headers(scope=scope).get("authorization", ""))
        if found is None:
            if path.startswith("/fhir"):
                refusal: Response = outcome_response(
                    401, [Issue("login", "missing or invalid bearer token")], CHALLENGE
                )
            else:
                refusal = JSONResponse(
                    {"status": 401, "detail": "missing or invalid bearer token"},
                    status_code=401,
                    headers=CHALLENGE,
                )
            await refusal(scope, receive, send)
            return
        principal, claims = found
        if ("patient" in claims or "patients" in claims) and not path.startswith(PATIENT_SCOPED_PREFIX):
            forbidden = JSONResponse(
                {"status": 403, "detail": "a patient-scoped token may call the agent tools only"},
                status_code=403,
            )
            await forbidden(scope, receive, send)
            return
        state["principal"], state["claims"] = principal, claims
        state["access"] = access_of(principal, claims)
        await self._app(scope, receive, send)


def build_app(
    authenticator: Authenticator | str,
    routes: Sequence[BaseRoute],
    *,
    audit: AuditLog,
    own_auth: tuple[str, ...] = (),
    openapi: Mapping[str, Mapping[str, Any]] | None = None,
) -> Starlette:
    """The API application with health, metrics and the stages' routes.

    ``authenticator`` may be a bare token (tests, simple deployments); routes under the
    ``own_auth`` path prefixes check their callers themselves. ``audit``: where the routes'
    AuditEvents go. ``openapi``: the stages' operations by path, published (with health and
    metrics) at ``/openapi.json``. Every route must be a `Guarded` (TypeError otherwise).
    """
    unguarded = [getattr(r, "path", repr(r)) for r in routes if not isinstance(r, Guarded)]
    if unguarded:
        raise TypeError(f"routes without a stated access need: {', '.join(unguarded)}")
    auth = (
        authenticator
        if isinstance(authenticator, Authenticator)
        else Authenticator(authenticator, HttpSettings())
    )

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    paths = {
        "/health": {"get": operation("Liveness.", errors=(), secured=False)},
        "/metrics": {"get": operation("Prometheus metrics.", errors=("401",))},
        **(openapi or {}),
    }
    described = document("clinstream API", paths)

    async def openapi_json(_: Request) -> JSONResponse:
        return JSONResponse(described)

    return Starlette(
        routes=[
            Guarded("/health", health, methods=["GET"], need=PUBLIC),
            Guarded("/metrics", metrics, methods=["GET"], need=TOKEN),
            Guarded("/openapi.json", openapi_json, methods=["GET"], need=TOKEN),
            *routes,
        ],
        middleware=[Middleware(BearerAuth, authenticator=auth, audit=audit, own_auth=own_auth)],
    )


class ApiServer(uvicorn.Server):
    """uvicorn in our event loop; signals are handled by `clinstream`, not uvicorn."""

    def capture_signals(self) -> Any:
        return nullcontext()


def make_server(app: Starlette, host: str, port: int, tls: HttpSettings | None = None) -> ApiServer:
    """A server ready to `serve()` in the current loop; over TLS when ``tls`` names a certificate."""
    certs: dict[str, Any] = {}
    if tls is not None and tls.tls_cert is not None:
        if tls.tls_key is None:
            raise ValueError("CLINSTREAM_HTTP__TLS_KEY is needed with CLINSTREAM_HTTP__TLS_CERT")
        certs = {"ssl_certfile": str(tls.tls_cert), "ssl_keyfile": str(tls.tls_key)}
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", **certs
    )
    return ApiServer(config)


def own_client_verify(http: HttpSettings) -> ssl.SSLContext | bool:
    """How this deployment's own clients of its API (agent tools, dashboard) check its
    certificate: the configured CA (or the certificate itself), not the host name, since they
    call 127.0.0.1 while the certificate names the public host."""
    if http.tls_cert is None:
        return True
    context = ssl.create_default_context(cafile=str(http.tls_ca_file or http.tls_cert))
    context.check_hostname = False
    return context
