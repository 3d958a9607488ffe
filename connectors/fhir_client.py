"""FHIR write-back: PUT resources to the EHR's FHIR server with their deterministic ids.

PUT with our ids is idempotent: a retried or replayed write overwrites instead of
duplicating. 409/412 (concurrent update), 429 (Retry-After honoured, capped) and 5xx or
network errors are retried with backoff up to ``max_attempts``; other 4xx are final
rejections. The outcome keeps the HTTP status and the OperationOutcome issue codes, not
the server's diagnostics text (which may quote patient data).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from kernel.settings import OutboundSettings

log = logging.getLogger(__name__)
_OUTBOUND = OutboundSettings()  # the defaults of the settings, written there once
RETRY_STATUSES = frozenset({409, 412, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The result of writing one resource."""

    outcome: Literal["delivered", "rejected", "failed"]
    status: str  # HTTP status of the last attempt, or "connection"
    attempts: int
    reference: str
    issues: tuple[str, ...] = ()


def retry_after_s(value: str | None, *, default: float, cap: float) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped."""
    if not value:
        return default
    try:
        return min(cap, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return min(cap, max(0.0, (when - datetime.now(UTC)).total_seconds()))


def _issue_codes(response: httpx.Response) -> tuple[str, ...]:
    try:
        body = response.json()
    except ValueError:
        return ()
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ()
    return tuple(str(i.get("code", "")) for i in body.get("issue", []) if isinstance(i, dict))[:10]


class FhirWriter:
    """Writes resources to one FHIR base URL through an injected httpx client."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        *,
        max_attempts: int = _OUTBOUND.max_attempts,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._base = base_url.rstrip("/")
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._sleep = sleep

    async def put(self, resource: dict[str, Any]) -> WriteResult:
        """PUT one resource at ``{base}/{type}/{id}``."""
        reference = f"{resource['resourceType']}/{resource['id']}"
        status = "connection"
        issues: tuple[str, ...] = ()
        for attempt in range(1, self._max_attempts + 1):
            wait = min(self._backoff_max, self._backoff_initial * 2 ** (attempt - 1))
            try:
                response = await self._client.put(
                    f"{self._base}/{reference}",
                    json=resource,
                    headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
                )
            except httpx.TransportError:
                status = "connection"
            else:
                status, issues = str(response.status_code), _issue_codes(response)
                if response.is_success:
                    return WriteResult("delivered", status, attempt, reference)
                if response.status_code not in RETRY_STATUSES:
                    return WriteResult("rejected", status, attempt, reference, issues)
                if response.status_code == 429:
                    wait = retry_after_s(
                        response.headers.get("retry-after"), default=wait, cap=self._backoff_max
                    )
            log.warning("FHIR write-back %s attempt %d got %s", reference, attempt, status)
            if attempt < self._max_attempts:
                await self._sleep(wait)
        return WriteResult("failed", status, self._max_attempts, reference, issues)
