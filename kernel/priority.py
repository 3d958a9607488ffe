"""Work that can wait, at a lower CPU priority: embedding, drafting, and backfilled history.

Embedding is the heaviest work in the pipeline and the least urgent: a resource that becomes
searchable a second later harms nobody, an alert or an MLLP ACK that waits behind a backlog of
embeddings does. On Linux a thread's nice value is its own (`setpriority` on its thread id),
and threads it starts inherit it, so the indexer's writes run in one dedicated thread with a
raised nice value, and the ONNX Runtime session the indexer uses is opened in that thread so
that the session's own pool threads inherit it too. The query API keeps a session of its own
at normal priority, so a search is not slowed by the indexer's backlog.

History loaded by `clinstream backfill` travels in the ``backfill`` lane (`kernel.events.Lane`).
`in_lane` runs a backfill record's CPU-heavy step (validating a patient's whole transaction,
normalizing it, running decision support over it) in a low-priority thread of its stage, off
the event loop, so the live records that the loop is serving in the meantime go first.
A live record's step runs as before, on the loop.

A nice value cannot share out Python's own lock, though: in one process every stage's Python
code takes turns on one interpreter. So history is also admitted only while live records are
served on time: decision support notes how late each live record reached it (`LivePressure`),
and while one was later than the limit within the last two seconds, the edges answer backfill
requests with 429 and Retry-After (FHIR) or hold their ACK (the backfill MLLP listener).
History then takes what the live traffic leaves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

from kernel.events import Lane

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKFILL_NICE = 10
"""How much lower than the process the backfill thread runs (the indexer's default too)."""


def lower_thread_priority(increment: int) -> bool:
    """Raise the calling thread's nice value by ``increment`` (capped at 19). True when done;
    False where the platform has no per-thread nice value (not Linux) or it was refused."""
    if increment <= 0:
        return False
    if not sys.platform.startswith("linux"):
        log.info("thread priority left alone: per-thread nice values are Linux-only")
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:
        log.warning("could not lower a background thread's priority: %s", exc)
        return False
    return True


def background_executor(nice: int, name: str = "clinstream-indexer") -> ThreadPoolExecutor:
    """One worker thread whose nice value is raised by ``nice`` before it runs anything."""
    return ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix=name,
        initializer=lower_thread_priority,
        initargs=(nice,),
    )


@cache
def backfill_executor(stage: str) -> ThreadPoolExecutor:
    """``stage``'s one thread for backfill work, at ``BACKFILL_NICE`` (made on first use). One per
    stage, so that history waiting in one stage does not queue behind another's."""
    return background_executor(BACKFILL_NICE, f"clinstream-backfill-{stage}")


async def in_lane(lane: Lane, work: Callable[[], T], *, stage: str) -> T:
    """``work()``: on the loop for a live record, in ``stage``'s low-priority backfill thread for a
    backfill one (the loop serves live records while it runs)."""
    if lane == "live":
        return work()
    return await asyncio.get_running_loop().run_in_executor(backfill_executor(stage), work)


class LivePressure:
    """How late live records reach decision support in this process, and whether history waits."""

    def __init__(
        self, limit_s: float = 0.25, window_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit_s = limit_s
        self._window_s = window_s
        self._clock = clock
        self._late_at = float("-inf")

    def note(self, delay_s: float) -> None:
        """A live record was served ``delay_s`` after the edge took it."""
        if delay_s > self.limit_s:
            self._late_at = self._clock()

    def busy(self) -> bool:
        """Whether a live record was late within the window: history should wait."""
        return self._clock() - self._late_at < self._window_s

    async def quiet(self, max_wait_s: float, step_s: float = 0.05) -> bool:
        """Wait until not `busy` (True), or ``max_wait_s`` (False: go on anyway, slowly)."""
        deadline = self._clock() + max_wait_s
        while self.busy():
            if self._clock() >= deadline:
                return False
            await asyncio.sleep(step_s)
        return True
