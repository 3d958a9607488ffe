"""MLLP ingest into the embedded broker: sustained throughput and ACK latency.

The listener (MllpServer + the ingress sink, acks=all, exactly as `clinstream up` runs it) runs in
its own process against an embedded Tansu broker; the senders run in this process, each
on its own connection, waiting for every ACK before the next message (as interface
engines do). Messages are real corpus messages with fresh control ids.

Phase 1, sustained: 4 senders as fast as they can for --seconds; prints msg/s.
Phase 2, paced: 4 senders at 500 msg/s in total for --seconds; prints ACK latency
p50/p95/p99 (send → ACK read, client side).
Each phase runs --runs times; medians are printed.

Usage: python bench/mllp_ingest.py [--seconds 10] [--runs 3] [--senders 4] [--rate 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinstream.runtime import EmbeddedBroker, ensure_topics  # noqa: E402
from connectors.mllp_client import MllpClient  # noqa: E402
from connectors.mllp_server import record_key  # noqa: E402
from kernel.errors import Hl7Error  # noqa: E402
from kernel.events import Topics  # noqa: E402
from kernel.hl7v2.parser import decode_payload, parse_message, split_batch  # noqa: E402


def corpus_messages(corpora: Path) -> list[str]:
    """Well-formed single messages (with a patient) from the corpus."""
    out = []
    for path in sorted((corpora / "hl7v2").rglob("*")):
        if not path.is_file():
            continue
        for text in split_batch(decode_payload(path.read_bytes())).messages:
            try:
                msg = parse_message(text)
            except Hl7Error:
                continue
            try:
                record_key(msg)
            except Hl7Error:
                continue
            if msg.control_id and msg.message_code and msg.first("PID") and not msg.msh.value(15):
                out.append(text)
    return out


def control_id_template(text: str) -> tuple[bytes, bytes]:
    """The message bytes before and after MSH-10, so each send can carry a fresh control id."""
    msg = parse_message(text)
    fields = list(msg.msh.fields)
    fs = msg.seps.field
    before = fs.join([fields[0], *fields[2:10]]) + fs
    after = fs + fs.join(fields[11:])
    rest = "\r".join(text.split("\r")[1:])
    return before.encode(), (after + "\r" + rest).encode()


def serve(bootstrap: str, port_file: Path) -> None:
    """The listener process."""
    from connectors.kafka_sink import make_sink
    from connectors.mllp_server import MllpServer
    from kernel.settings import KafkaSettings, MllpSettings, producer_config

    async def main() -> None:
        kafka = KafkaSettings(ingest_client=os.environ.get("BENCH_INGEST_CLIENT", "librdkafka"))
        sink = make_sink(
            kafka.ingest_client, producer_config(kafka, bootstrap, tansu=True), confirm_timeout_s=11
        )
        await sink.start()
        server = MllpServer(sink, Topics(), MllpSettings(port=0))  # default settings, as deployed
        await server.start()
        port_file.write_text(str(server.port))
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # lets a profiler write its output
    uvloop.run(main())  # as `clinstream up` runs


async def sender(
    port: int,
    templates: list[tuple[bytes, bytes]],
    prefix: str,
    stop_at: float,
    interval: float | None,
    latencies: list[float],
    codes: dict[str, int],
) -> int:
    sent = 0
    async with MllpClient("127.0.0.1", port) as client:
        next_at = time.perf_counter()
        while time.perf_counter() < stop_at:
            if interval is not None:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            started = time.perf_counter()
            before, after = templates[sent % len(templates)]
            # A fresh MSH-10 on every send: a repeated one would be answered from the
            # retransmission memory without touching Kafka, and flatter the figures.
            result = await client.send(before + f"{prefix}N{sent}".encode() + after)
            latencies.append(time.perf_counter() - started)
            code = result.code or "none"
            codes[code] = codes.get(code, 0) + 1
            sent += 1
    return sent


async def phase(
    port: int, texts: list[str], run: int, senders: int, seconds: float, rate: float | None
) -> tuple[float, list[float], dict[str, int]]:
    templates = [control_id_template(t) for t in texts]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    interval = senders / rate if rate else None
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(
            sender(port, templates, f"B{run}S{s}", start + seconds, interval, latencies, codes)
            for s in range(senders)
        )
    )
    return sum(counts) / (time.perf_counter() - start), latencies, codes


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


async def main(args: argparse.Namespace) -> None:
    texts = corpus_messages(args.corpora)
    async with EmbeddedBroker() as broker:
        await ensure_topics(broker.bootstrap, Topics().all(), partitions=6, replication_factor=1)
        port_file = Path(f"/tmp/clinstream-bench-{os.getpid()}.port")
        port_file.unlink(missing_ok=True)
        profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        server = subprocess.Popen(
            [sys.executable, *profile, __file__, "--serve", broker.bootstrap, str(port_file)], cwd=REPO
        )
        try:
            while not port_file.exists() or not port_file.read_text():
                await asyncio.sleep(0.1)
            port = int(port_file.read_text())
            print(
                f"messages: {len(texts)} distinct corpus messages, fresh MSH-10 each send; "
                f"{args.senders} senders; broker {broker.bootstrap} (embedded Tansu, acks=all)"
            )
            throughput = []
            for run in range(args.runs):
                rate, _, codes = await phase(port, texts, run, args.senders, args.seconds, None)
                throughput.append(rate)
                print(f"  sustained run {run + 1}: {rate:8.0f} msg/s  acks {codes}")
            p50s, p95s, p99s, achieved = [], [], [], []
            for run in range(args.runs):
                rate, lat, codes = await phase(port, texts, 100 + run, args.senders, args.seconds, args.rate)
                p50s.append(pct(lat, 50))
                p95s.append(pct(lat, 95))
                p99s.append(pct(lat, 99))
                achieved.append(rate)
                print(
                    f"  paced run {run + 1}: {rate:6.0f} msg/s  ACK p50 {p50s[-1]:.2f} ms  "
                    f"p95 {p95s[-1]:.2f} ms  p99 {p99s[-1]:.2f} ms  acks {codes}"
                )
            print(
                f"sustained throughput: median {statistics.median(throughput):.0f} msg/s "
                f"({args.runs} runs x {args.seconds:.0f} s)  [target >= 2000]"
            )
            print(
                f"ACK latency at {statistics.median(achieved):.0f} msg/s: median p50 "
                f"{statistics.median(p50s):.2f} ms, p95 {statistics.median(p95s):.2f} ms, "
                f"p99 {statistics.median(p99s):.2f} ms  [target p99 <= 20 ms at 500 msg/s]"
            )
        finally:
            server.terminate()
            server.wait(timeout=10)
            port_file.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], Path(sys.argv[3]))
        raise SystemExit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    parser.add_argument("--profile", help="write a cProfile of the listener process to this file")
    uvloop.run(main(parser.parse_args()))  # the senders stand in for a fast interface engine
