"""`make soak` (not part of `make test`): every stage as its own process, the corpus streamed over
MLLP at 200 messages/s for 10 minutes (`CLINSTREAM_SOAK_S`, `CLINSTREAM_SOAK_RATE`).

Prints the figures: messages sent and acknowledged, the rate reached, each process's resident
memory after the warm-up and at the end, and how long the consumer lag took to return to
zero. Fails when a message is not acknowledged, when lag does not return to zero, or when a
stage process's memory grows by more than a quarter (Milvus' is reported: it grows with the
data it holds)."""

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.integration.processes import (
    Sender,
    committed_offsets,
    deployment,
    lag_of,
    load_messages,
    wait_settled,
    with_control_id,
)

pytestmark = [pytest.mark.soak, pytest.mark.timeout(3600)]
SECONDS = float(os.environ.get("CLINSTREAM_SOAK_S", "600"))
RATE = float(os.environ.get("CLINSTREAM_SOAK_RATE", "200"))
WARM_UP_S = min(60.0, SECONDS / 5)
CONNECTIONS = 4
DRAIN_S = float(os.environ.get("CLINSTREAM_SOAK_DRAIN_S", "1800"))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _committed(bootstrap: str) -> dict[str, int]:
    """Records committed so far, per consumer group."""
    totals: dict[str, int] = {}
    for (group, _, _), offset in committed_offsets(bootstrap).items():
        totals[group] = totals.get(group, 0) + max(offset, 0)
    return totals


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_soak(tmp_path):
    seeds = load_messages()
    total = int(SECONDS * RATE)
    feed = ((f"K{n:07d}", with_control_id(seeds[n % len(seeds)], f"K{n:07d}")) for n in range(total))
    # Two decision-support / drafting / assistance instances in one consumer group, each with its
    # own state replica, as two machines would run them.
    procs = {n: [n] for n in ("normalizer", "indexer", "connectors")} | {
        "inference1": ["inference"],
        "inference2": ["inference"],
    }
    extra = {
        "CLINSTREAM_KAFKA__PARTITIONS": "6",
        "CLINSTREAM_NOTES__GENERATOR": "false",
        "CLINSTREAM_LOG_LEVEL": "WARNING",
        "CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS": "10000",  # the production default under load
    }
    async with deployment(tmp_path, procs, own_dirs=("inference1", "inference2"), **extra) as d:
        bootstrap = d.broker.bootstrap
        assert d.milvus.proc is not None
        pids = {name: p.proc.pid for name, p in d.procs.items() if p.proc} | {"milvus": d.milvus.proc.pid}
        # Four connections, as interface engines send (one connection tops out near 100 msg/s
        # here when the cores are busy); each patient's messages may interleave across them.
        senders = [Sender(d.procs["connectors"].mllp_port) for _ in range(CONNECTIONS)]
        messages = list(feed)
        started = time.monotonic()
        load = asyncio.gather(
            *(s.run(messages[i::CONNECTIONS], rate=RATE / CONNECTIONS) for i, s in enumerate(senders))
        )
        await asyncio.sleep(WARM_UP_S)
        rss_start = {name: _rss_kib(pid) for name, pid in pids.items()}
        cpu_start = {name: _cpu_s(pid) for name, pid in pids.items()}
        done_start, window_start = await asyncio.to_thread(_committed, bootstrap), time.monotonic()
        lag_mid = await lag_of(bootstrap, exact=False)
        await load
        sent_s = time.monotonic() - started
        rss_end = {name: _rss_kib(pid) for name, pid in pids.items()}
        ended = time.monotonic()
        lag_end = await lag_of(bootstrap, exact=False)
        drained_s: float | None = None
        try:
            # every consumer group: the stages' and the drafting and assistance consumers'
            await wait_settled(bootstrap, lag_end.keys(), timeout_s=DRAIN_S, exact=False)
            drained_s = time.monotonic() - ended
        except AssertionError:
            pass  # reported below with the figures
        lag_last = await lag_of(bootstrap, exact=False)
        window_s = time.monotonic() - window_start
        cpu_used = {name: _cpu_s(pid) - cpu_start[name] for name, pid in pids.items()}
        done_end = await asyncio.to_thread(_committed, bootstrap)
        rss_drained = {name: _rss_kib(pid) for name, pid in pids.items()}

    answers = {cid: code for s in senders for cid, code in s.answers.items()}
    accepted = sum(1 for code in answers.values() if code == "AA")
    retries = sum(s.retries for s in senders)
    print(f"\nsoak: {total} messages in {sent_s:.0f} s = {total / sent_s:.0f} msg/s (target {RATE:.0f}); "
          f"AA {accepted}; sender retries {retries}")  # fmt: skip
    settled = (
        f"zero {drained_s:.0f} s later" if drained_s is not None else f"{lag_last} after {DRAIN_S:.0f} s"
    )
    print(f"lag after the warm-up {lag_mid}; at the end of the load {lag_end}; {settled}")
    print(
        f"{'process':<12} {'CPU':>6} {'RSS after warm-up':>18} {'RSS end of load':>16} {'RSS drained':>12}"
        f" {'growth':>7}   (CPU: % of one core from the warm-up's end until drained, {window_s:.0f} s)"
    )
    for name in pids:
        growth = rss_end[name] / rss_start[name] - 1
        print(
            f"{name:<12} {100 * cpu_used[name] / window_s:>5.0f}% {rss_start[name] / 1024:>15.0f} MiB"
            f" {rss_end[name] / 1024:>12.0f} MiB {rss_drained[name] / 1024:>8.0f} MiB {growth:>+7.1%}"
        )
    print("consumer group   records/s (from the warm-up's end until drained)")
    for group in sorted(done_end):
        print(f"{group:<16} {(done_end[group] - done_start.get(group, 0)) / window_s:>9.1f}")
    assert accepted == total
    assert drained_s is not None, f"consumer lag not back to zero {DRAIN_S:.0f} s after the load: {lag_last}"
    for name in d.procs:  # our processes; Milvus' memory grows with the data it holds
        assert rss_end[name] <= rss_start[name] * 1.25, (
            f"{name} grew from {rss_start[name]} to {rss_end[name]} kB"
        )
