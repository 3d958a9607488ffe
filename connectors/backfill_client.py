"""Sending a backfill plan to a running deployment (the adapter behind `clinstream backfill`).

FHIR units go to ``POST {to}/fhir`` with the deployment's bearer token, marked as the
``backfill`` lane (``X-Clinstream-Lane``); HL7 v2 units over MLLP, to the deployment's backfill
listener (``CLINSTREAM_MLLP__BACKFILL_PORT``) so that they are marked too. A unit is done when
the deployment answered for it: stored (200, AA/CA) or refused (4xx, AE/AR: the deployment
dead-lettered it and says why; sending it again would be refused again).
Either way it is appended to the checkpoint, so ``--resume`` goes on after it. A deployment
that does not answer, or answers 5xx, is tried again with growing pauses; after ``attempts``
the run stops, its checkpoint intact. Sending is paced to ``rate`` units a second, so live
traffic keeps the cores it needs, and waits whenever the deployment says so (429 with
Retry-After while its live records are late; the backfill MLLP listener holds its ACK).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from connectors.backfill import Unit, checkpoint_line
from connectors.fhir_client import retry_after_s
from connectors.fhir_ingress import LANE_HEADER
from connectors.mllp_client import MllpClient


@dataclass
class Report:
    """What a run did."""

    outcomes: Counter[str] = field(default_factory=Counter)
    refused: list[tuple[str, str]] = field(default_factory=list)
    stopped: str | None = None
    """Why the run stopped before the end (the deployment did not answer), or None."""
    throttled: int = 0
    """How often the deployment said to wait (429: its live records were late)."""


class Pace:
    """At most ``rate`` units a second (0: no limit)."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._gap = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._next = clock()

    async def wait(self) -> None:
        """Sleep until the next unit may go."""
        if not self._gap:
            return
        now = self._clock()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(self._next, now) + self._gap


@dataclass(frozen=True)
class Target:
    """Where a backfill goes."""

    fhir_base: str
    token: str
    mllp: tuple[str, int] | None = None
    tls: ssl.SSLContext | None = None
    attempts: int = 5


async def send_plan(
    units: Sequence[Unit],
    target: Target,
    checkpoint: Path,
    *,
    rate: float = 0.0,
    progress: Callable[[int], None] = lambda _n: None,
) -> Report:
    """Send ``units`` in order, appending each one the deployment answered to ``checkpoint``."""
    report = Report()
    pace = Pace(rate)
    headers = {
        "Authorization": f"Bearer {target.token}",
        "Content-Type": "application/fhir+json",
        LANE_HEADER: "backfill",  # the deployment serves live records first
    }
    verify: ssl.SSLContext | bool = target.tls or True
    mllp: MllpClient | None = None
    async with httpx.AsyncClient(
        base_url=target.fhir_base, headers=headers, timeout=120, verify=verify
    ) as http:
        try:
            with checkpoint.open("a", encoding="utf-8") as done:
                for unit in units:
                    await pace.wait()
                    if unit.kind == "hl7" and mllp is None:
                        if target.mllp is None:
                            report.stopped = "HL7 v2 units need --mllp HOST:PORT"
                            return report
                        mllp = MllpClient(*target.mllp, ssl=target.tls)
                        await mllp.__aenter__()
                    outcome = await _deliver(unit, http, mllp, target.attempts, report)
                    if outcome is None:
                        report.stopped = (
                            f"the deployment did not take {unit.source} after {target.attempts} tries"
                        )
                        return report
                    _record(done, unit, outcome, report)
                    progress(1)
        finally:
            if mllp is not None:
                await mllp.__aexit__(None, None, None)
    return report


def _record(done: IO[str], unit: Unit, outcome: str, report: Report) -> None:
    done.write(checkpoint_line(unit, outcome))
    done.flush()
    report.outcomes[outcome.split(":")[0]] += 1
    if outcome.startswith("refused"):
        report.refused.append((unit.source, outcome))


async def _deliver(
    unit: Unit, http: httpx.AsyncClient, mllp: MllpClient | None, attempts: int, report: Report
) -> str | None:
    """``stored`` or ``refused: why``; None when the deployment never answered."""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
        try:
            if unit.kind == "fhir":
                response = await http.post("/fhir", content=unit.payload)
                while response.status_code == 429:  # live records first: not a failed try
                    report.throttled += 1
                    await asyncio.sleep(
                        retry_after_s(response.headers.get("retry-after"), default=1.0, cap=30.0)
                    )
                    response = await http.post("/fhir", content=unit.payload)
                if response.status_code < 300:
                    return "stored"
                if response.status_code < 500:
                    return f"refused: HTTP {response.status_code}"
                continue
            assert mllp is not None  # noqa: S101 - send_plan opened it for HL7 units
            ack = await mllp.send(unit.payload, timeout_s=60)
            if ack.code in ("AA", "CA"):
                return "stored"
            if ack.code in ("AE", "AR", "CE", "CR"):
                return f"refused: {ack.code}"
            await _reopen(mllp)  # no ACK: a new connection for the next try
        except (httpx.HTTPError, OSError, TimeoutError):
            if unit.kind == "hl7" and mllp is not None:
                await _reopen(mllp)
            continue
    return None


async def _reopen(mllp: MllpClient) -> None:
    await mllp.__aexit__(None, None, None)
    try:
        await mllp.__aenter__()
    except OSError:
        pass  # the next try fails and waits again
