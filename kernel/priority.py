"""The indexer's background thread: embedding and Milvus writes at a lower CPU priority.

Embedding is the heaviest work in the pipeline and the least urgent: a resource that becomes
searchable a second later harms nobody, an alert or an MLLP ACK that waits behind a backlog of
embeddings does. On Linux a thread's nice value is its own (`setpriority` on its thread id),
and threads it starts inherit it, so the indexer's writes run in one dedicated thread with a
raised nice value, and the ONNX Runtime session the indexer uses is opened in that thread so
that the session's own pool threads inherit it too. The query API keeps a session of its own
at normal priority, so a search is not slowed by the indexer's backlog.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


def lower_thread_priority(increment: int) -> bool:
    """Raise the calling thread's nice value by ``increment`` (capped at 19). True when done;
    False where the platform has no per-thread nice value (not Linux) or it was refused."""
    if increment <= 0:
        return False
    if not sys.platform.startswith("linux"):
        log.info("indexer thread priority left alone: per-thread nice values are Linux-only")
        return False
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + increment))
    except OSError as exc:
        log.warning("could not lower the indexer thread's priority: %s", exc)
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
