"""The indexer's low-priority thread (`kernel.priority`): its nice value, and that threads it
starts, ONNX Runtime's pool among them, inherit it while the rest of the process keeps its own."""

import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from kernel.onnx_session import open_session
from kernel.priority import BACKFILL_NICE, LivePressure, background_executor, in_lane, lower_thread_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def task_nices() -> dict[int, int]:
    """Nice value of every thread of this process, by thread id (/proc, field 19 of stat)."""
    nices = {}
    for task in Path("/proc/self/task").iterdir():
        with open(task / "stat") as stat:  # the command name may hold spaces: split after ')'
            fields = stat.read().rsplit(")", 1)[1].split()
        nices[int(task.name)] = int(fields[16])
    return nices


def test_only_the_calling_thread_is_lowered():
    main_before = nice_of(threading.get_native_id())
    seen: dict[str, int] = {}

    def work() -> None:
        before = nice_of(threading.get_native_id())
        seen["done"] = lower_thread_priority(5)
        seen["raised_by"] = nice_of(threading.get_native_id()) - before

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen == {"done": True, "raised_by": min(5, 19 - main_before)}
    assert nice_of(threading.get_native_id()) == main_before


def test_no_increment_changes_nothing():
    before = nice_of(threading.get_native_id())
    assert lower_thread_priority(0) is False
    assert nice_of(threading.get_native_id()) == before


def test_the_nice_value_is_capped_at_19():
    def work() -> int:
        lower_thread_priority(15)
        lower_thread_priority(15)
        return nice_of(threading.get_native_id())

    with background_executor(0) as executor:
        assert executor.submit(work).result() == 19


def test_an_onnx_session_opened_in_the_background_thread_runs_its_pool_there(identity_model):
    main_nice = nice_of(threading.get_native_id())
    with background_executor(7) as executor:
        worker_nice = executor.submit(lambda: nice_of(threading.get_native_id())).result()
        before = set(task_nices())
        session = executor.submit(open_session, identity_model, ["CPUExecutionProvider"], 2).result()
        pool = {tid: nice for tid, nice in task_nices().items() if tid not in before}
    assert worker_nice == min(19, main_nice + 7)
    assert pool, "a 2-thread session starts at least one pool thread"
    assert set(pool.values()) == {worker_nice}
    assert nice_of(threading.get_native_id()) == main_nice
    assert session.run(None, {"x": np.array([1.0], dtype=np.float32)})[0].tolist() == [1.0]


async def test_live_work_runs_on_the_loop_and_backfill_work_in_the_low_priority_thread():
    loop_thread = threading.get_native_id()

    def where() -> tuple[int, str, int]:
        tid = threading.get_native_id()
        return tid, threading.current_thread().name, nice_of(tid)

    live = await in_lane("live", where, stage="t")
    history = await in_lane("backfill", where, stage="t")
    assert live[0] == loop_thread
    assert history[0] != loop_thread
    assert history[1].startswith("clinstream-backfill-t")
    assert history[2] == min(19, nice_of(loop_thread) + BACKFILL_NICE)
    assert (await in_lane("backfill", where, stage="t"))[0] == history[0]  # one thread a stage
    assert (await in_lane("backfill", where, stage="u"))[0] != history[0]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_history_waits_while_a_live_record_was_late_within_the_window():
    clock = Clock()
    pressure = LivePressure(limit_s=0.25, window_s=2.0, clock=clock)
    assert not pressure.busy()
    pressure.note(0.1)  # on time
    assert not pressure.busy()
    pressure.note(0.4)
    assert pressure.busy()
    clock.now += 1.9
    assert pressure.busy()
    clock.now += 0.2
    assert not pressure.busy()


async def test_quiet_returns_once_the_window_passes_or_gives_up_at_its_limit():
    pressure = LivePressure(limit_s=0.25, window_s=0.15)
    pressure.note(1.0)
    assert await pressure.quiet(max_wait_s=2.0, step_s=0.01) is True
    pressure = LivePressure(limit_s=0.25, window_s=60)
    pressure.note(1.0)
    assert await pressure.quiet(max_wait_s=0.05, step_s=0.01) is False
