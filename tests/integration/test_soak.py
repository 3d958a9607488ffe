"""`make soak` (not part of `make test`): every stage as its own process, the corpus streamed over
MLLP at 200 messages/s for 10 minutes (`CLINSTREAM_SOAK_S`, `CLINSTREAM_SOAK_RATE`).

Prints the figures: messages sent and acknowledged, the rate reached, each process's resident
memory after the warm-up and at the end, and how long the consumer lag took to return to
zero. Fails when a message is not acknowledged, when lag does not return to zero, or when a
process's memory grows by more than a quarter."""

import asyncio
import os
import time

import pytest

from tests.integration.processes import (
    Sender,
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
DRAIN_S = float(os.environ.get("CLINSTREAM_SOAK_DRAIN_S", "1800"))


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_soak(tmp_path):
    seeds = load_messages()
    total = int(SECONDS * RATE)
    feed = ((f"K{n:07d}", with_control_id(seeds[n % len(seeds)], f"K{n:07d}")) for n in range(total))
    procs = {n: [n] for n in ("normalizer", "indexer", "inference", "connectors")}
    extra = {
        "CLINSTREAM_KAFKA__PARTITIONS": "6",
        "CLINSTREAM_NOTES__GENERATOR": "false",
        "CLINSTREAM_LOG_LEVEL": "WARNING",
    }
    async with deployment(tmp_path, procs, **extra) as d:
        bootstrap = d.broker.bootstrap
        assert d.milvus.proc is not None
        pids = {name: p.proc.pid for name, p in d.procs.items() if p.proc} | {"milvus": d.milvus.proc.pid}
        sender = Sender(d.procs["connectors"].mllp_port)
        started = time.monotonic()
        load = asyncio.create_task(sender.run(list(feed), rate=RATE))
        await asyncio.sleep(WARM_UP_S)
        rss_start = {name: _rss_kib(pid) for name, pid in pids.items()}
        lag_mid = await lag_of(bootstrap, exact=False)
        await load
        sent_s = time.monotonic() - started
        rss_end = {name: _rss_kib(pid) for name, pid in pids.items()}
        ended = time.monotonic()
        lag_end = await lag_of(bootstrap, exact=False)
        await wait_settled(bootstrap, ("normalizer", "indexer", "cds"), timeout_s=DRAIN_S, exact=False)
        drained_s = time.monotonic() - ended
        rss_drained = {name: _rss_kib(pid) for name, pid in pids.items()}

    accepted = sum(1 for code in sender.answers.values() if code == "AA")
    print(f"\nsoak: {total} messages in {sent_s:.0f} s = {total / sent_s:.0f} msg/s (target {RATE:.0f}); "
          f"AA {accepted}; sender retries {sender.retries}")  # fmt: skip
    print(f"lag after the warm-up {lag_mid}; at the end of the load {lag_end}; zero {drained_s:.0f} s later")
    print(
        f"{'process':<12} {'RSS after warm-up':>18} {'RSS end of load':>16} {'RSS drained':>12} {'growth':>7}"
    )
    for name in pids:
        growth = rss_end[name] / rss_start[name] - 1
        print(
            f"{name:<12} {rss_start[name] / 1024:>15.0f} MiB {rss_end[name] / 1024:>12.0f} MiB "
            f"{rss_drained[name] / 1024:>8.0f} MiB {growth:>+7.1%}"
        )
    assert accepted == total
    for name in pids:
        assert rss_end[name] <= rss_start[name] * 1.25, (
            f"{name} grew from {rss_start[name]} to {rss_end[name]} kB"
        )
