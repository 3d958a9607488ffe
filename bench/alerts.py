"""Decision support: event → alert latency with all stages running, CDS Hooks latency under
50 concurrent requests, and the alert burden on the Synthea patients.

1. **Event → alert.** Starts `clinstream up` as its own process (embedded Apache Kafka, MLLP
   listener, normalizer, indexer with the ONNX embedder and Milvus Lite, decision support;
   default settings plus an HS256 CDS Hooks secret) on a fresh data directory.
   Basic metabolic panels (potassium, sodium, creatinine, glucose, stamped with the current
   time) go over one MLLP connection that waits for each ACK, paced at each of --rates (messages/s).
   Most are normal results of a pool of 200 patients; every fifth is a new patient whose
   potassium is 6.6 mmol/L, which must raise exactly one critical-lab alert. A follower
   reads `cds.alerts.v1` (read_committed, as every consumer of alerts: an alert of a batch not yet
   committed does not count); an alert's latency runs from the send of its message to the
   follower's read. Prints p50/p95/p99/max, the rate achieved, alerts missing and surplus,
   the median of each step (from the records' envelope headers and Kafka timestamps), and how
   long after the last ACK the indexer and decision support had committed every normalized
   record (#28: ≤ 30 s after 60 s at 100 msg/s: `--rates 100 --seconds 60`).
2. **CDS Hooks.** A separate process (so the client does not share this process's event loop)
   sends --hook-requests `patient-view` calls, --concurrency at a time, each with its own
   signed JWT made beforehand, for the patients that have an alert; prints p50/p95/p99
   (client side, the first 100 calls are warm-up), requests/s and how many answers held a card.
3. **Alert burden.** Replays the 40 Synthea patients of the corpora as a feed (one record per
   encounter, `bench/synthea_feed.py`) through the default rules; prints alerts per
   patient-day (days with an encounter), the findings held back by reason, and the median
   time of `inference.cds.rules.process` per record.

Parts 1 and 2 run once per rate, each on a fresh `clinstream up`. Part 2 runs twice: right
after the feed (the indexer may still be working through its backlog) and --quiet-s later.
After it, the peak resident memory of `clinstream up` and of the broker it started.

Usage: python bench/alerts.py [--rates 25 100] [--seconds 20] [--quiet-s 30] [--concurrency 50]
                              [--hook-requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from bench.backlog import committed_offsets  # noqa: E402
from bench.synthea_feed import synthea_feed  # noqa: E402
from bench.synthetic import percentile  # noqa: E402
from clinstream.runtime import free_port  # noqa: E402
from connectors.mllp_client import MllpClient  # noqa: E402
from inference.cds.cards import PATIENT_VIEW  # noqa: E402
from inference.cds.http import CDS_HOOKS_PATH  # noqa: E402
from inference.cds.rules import RuleSet, process  # noqa: E402
from inference.cds.state import PatientState  # noqa: E402
from kernel.events import TOPICS, Alert, patient_key  # noqa: E402

SECRET = "bench-alerts-secret-bench-alerts-secret"  # noqa: S105 - the bench signs its own tokens
AUTHORITY = "BENCH"
PANEL = (
    "MSH|^~\\&|LIS|BENCH_LAB|EHR|BENCH|{ts}||ORU^R01^ORU_R01|{ctrl}|P|2.5.1\r"
    "PID|1||{mrn}^^^BENCH^MR||BENCH^PATIENT||19600101|F\r"
    "OBR|1|O{ctrl}|F{ctrl}^LIS|80048^Basic metabolic panel^C4|||{ts}\r"
    "OBX|1|NM|2823-3^Potassium^LN||{k}|mmol/L^mmol/L^UCUM|3.5-5.1||||F|||{ts}\r"
    "OBX|2|NM|2951-2^Sodium^LN||140|mmol/L^mmol/L^UCUM|136-145||||F|||{ts}\r"
    "OBX|3|NM|2160-0^Creatinine^LN||0.9|mg/dL^mg/dL^UCUM|0.6-1.1||||F|||{ts}\r"
    "OBX|4|NM|2345-7^Glucose^LN||95|mg/dL^mg/dL^UCUM|70-99||||F|||{ts}\r"
)
SETTLE_S = 60.0


@dataclass(frozen=True)
class Up:
    """Where the `clinstream up` process under test listens."""

    bootstrap: str
    mllp_port: int
    http_port: int
    pid: int = 0


def peak_memory(pid: int) -> str:
    """Peak and current resident memory of process ``pid`` and of each process it started
    (the embedded broker), from /proc (Linux)."""

    def status(p: int) -> dict[str, str]:
        lines = Path(f"/proc/{p}/status").read_text().splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def mib(field: str) -> float:
        return int(field.split()[0]) / 1024  # kB

    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        own = status(pid)
        parts = [f"clinstream up peak {mib(own['VmHWM']):.0f} MiB, now {mib(own['VmRSS']):.0f}"]
        for child in map(int, children):
            info = status(child)
            parts.append(f"{info['Name'].strip()} peak {mib(info['VmHWM']):.0f} MiB")
    except (OSError, KeyError, ValueError) as exc:
        return f"not read ({exc})"
    return "; ".join(parts)


@contextlib.asynccontextmanager
async def clinstream_up(var_dir: Path) -> AsyncIterator[Up]:
    """`clinstream up` in its own process, as a deployment runs it; stopped with SIGTERM."""
    up = Up(f"127.0.0.1:{free_port()}", free_port(), free_port())
    env = {
        **os.environ,
        "CLINSTREAM_VAR_DIR": str(var_dir),
        "CLINSTREAM_KAFKA__EMBEDDED_PORT": up.bootstrap.rsplit(":", 1)[1],
        "CLINSTREAM_MLLP__PORT": str(up.mllp_port),
        "CLINSTREAM_HTTP__PORT": str(up.http_port),
        "CLINSTREAM_CDS__JWT_SECRET": SECRET,
        "CLINSTREAM_LOG_LEVEL": "ERROR",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clinstream", "up", cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"http://127.0.0.1:{up.http_port}/health")).status_code == 200:
                        break
                if process.returncode is not None:
                    raise RuntimeError(f"clinstream up exited with {process.returncode}")
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError("clinstream up did not answer /health within 5 minutes")
        yield replace(up, pid=process.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            process.send_signal(signal.SIGTERM)
        await process.wait()


def panel(n: int, tag: str) -> tuple[bytes, str | None]:
    """Message ``n``: (bytes, the patient key that must alert, or None for a normal panel)."""
    ts = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    critical = n % 5 == 0
    mrn = f"{tag}C{n}" if critical else f"{tag}N{n % 200}"
    text = PANEL.format(ts=ts, ctrl=f"{tag}{n}", mrn=mrn, k="6.6" if critical else "4.2")
    return text.encode(), patient_key(AUTHORITY, mrn) if critical else None


@dataclass
class Seen:
    """Per patient: wall-clock times (s) at which its records passed each point."""

    received: dict[str, float] = field(default_factory=dict)  # connector received the message
    normalized: dict[str, float] = field(default_factory=dict)  # normalizer's record on ehr.fhir.v1
    alerted: dict[str, list[float]] = field(default_factory=dict)  # decision support's alert record
    read: dict[str, list[float]] = field(default_factory=dict)  # the follower read the alert
    fhir_records: int = 0  # normalized records read (committed ones: read_committed)
    fhir_next: dict[int, int] = field(default_factory=dict)  # partition → offset after the last one read


async def follow(up: Up, seen: Seen, stop: asyncio.Event) -> None:
    """Times of every normalized record and alert, by patient (Kafka CreateTime, read time)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=up.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        # An alert counts once committed, as the outbound delivery and every stage read it: with
        # exactly-once decision support, its transaction's commit is part of the latency.
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for assign()
        topics = (TOPICS.alerts, TOPICS.fhir)
        parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not stop.is_set():
            for part, records in (await consumer.getmany(timeout_ms=20)).items():
                now = time.time()
                for r in records:
                    if part.topic == TOPICS.fhir:  # the envelope headers say when the connector had it
                        seen.fhir_records += 1
                        seen.fhir_next[part.partition] = r.offset + 1
                        patient = (r.key or b"").decode()
                        received = dict(r.headers).get("received_at", b"").decode()
                        if received:
                            seen.received.setdefault(patient, datetime.fromisoformat(received).timestamp())
                        seen.normalized.setdefault(patient, r.timestamp / 1000)
                    else:
                        patient = Alert.model_validate_json(r.value).patient_id
                        seen.alerted.setdefault(patient, []).append(r.timestamp / 1000)
                        seen.read.setdefault(patient, []).append(now)
    finally:
        await consumer.stop()


def caught_up(up: Up, seen: Seen, records: int, since: float) -> dict[str, float | None]:
    """Seconds from ``since`` until the indexer's and decision support's consumer groups had
    committed every one of the ``records`` normalized records (None: not within SETTLE_S)."""
    admin = AdminClient({"bootstrap.servers": up.bootstrap})
    done: dict[str, float | None] = dict.fromkeys(("indexer", "cds"))
    deadline = since + SETTLE_S
    while time.perf_counter() < deadline and any(v is None for v in done.values()):
        if seen.fhir_records >= records:
            ends = dict(seen.fhir_next)
            for group in [g for g, v in done.items() if v is None]:
                at = committed_offsets(admin, group, TOPICS.fhir)  # none while its coordinator loads
                if all(at.get(p, -1) >= end for p, end in ends.items()):
                    done[group] = time.perf_counter() - since
        time.sleep(0.1)
    return done


async def event_to_alert(up: Up, rate: float, messages: int, tag: str = "A") -> list[str]:
    """Part 1; returns the patient keys that must have alerted. ``tag`` names this run's
    patients and control ids (a second run on one deployment needs its own)."""
    seen = Seen()
    stop = asyncio.Event()
    began = time.time()  # alerts before it are an earlier run's (the follower reads from the start)
    follower = asyncio.create_task(follow(up, seen, stop))
    await asyncio.sleep(2)  # the follower is assigned before the first alert
    sent_at: dict[str, float] = {}
    refused = 0
    start = time.perf_counter()
    async with MllpClient("127.0.0.1", up.mllp_port) as client:
        for n in range(messages):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            payload, alerting = panel(n, tag)
            sent = time.time()
            result = await client.send(payload)
            if result.code != "AA":
                refused += 1
            elif alerting is not None:
                sent_at[alerting] = sent
    send_s = time.perf_counter() - start
    last_ack = time.perf_counter()
    done_after = await asyncio.to_thread(caught_up, up, seen, messages - refused, last_ack)
    deadline = time.perf_counter() + SETTLE_S
    while time.perf_counter() < deadline and not set(sent_at) <= set(seen.read):
        await asyncio.sleep(0.2)
    await asyncio.sleep(2)  # a duplicate would arrive now
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    done = [p for p in sent_at if p in seen.read]
    latencies = [seen.read[p][0] - sent_at[p] for p in done]
    missing = len(sent_at) - len(latencies)
    surplus = sum(t >= began for times in seen.alerted.values() for t in times) - len(latencies)
    steps = {
        "send → connector": [seen.received[p] - sent_at[p] for p in done if p in seen.received],
        "connector → normalized": [
            seen.normalized[p] - seen.received[p] for p in done if p in seen.normalized
        ],
        "normalized → alert": [seen.alerted[p][0] - seen.normalized[p] for p in done if p in seen.normalized],
        "alert → read": [seen.read[p][0] - seen.alerted[p][0] for p in done],
    }
    print(
        f"event → alert at {messages / send_s:5.1f} msg/s achieved (target {rate:.0f}, {messages} panels,"
        f" {len(sent_at)} alerting): p50 {statistics.median(latencies) * 1000:6.1f} ms"
        f"  p95 {percentile(latencies, 95) * 1000:6.1f} ms  p99 {percentile(latencies, 99) * 1000:6.1f} ms"
        f"  max {max(latencies) * 1000:6.1f} ms; {missing} missing, {surplus} surplus, {refused} refused",
        flush=True,
    )
    print(
        "  after the last ACK: "
        + ", ".join(
            f"{group} done in {after:.1f} s" if after is not None else f"{group} NOT done in {SETTLE_S:.0f} s"
            for group, after in done_after.items()
        )
        + " (its group committed every normalized record)",
        flush=True,
    )
    print(
        "  medians per step: "
        + ", ".join(f"{step} {statistics.median(v) * 1000:.0f} ms" for step, v in steps.items() if v),
        flush=True,
    )
    return list(sent_at)


def _hammer(url: str, patients: list[str], requests: int, concurrency: int, out: Any) -> None:
    """Child process: ``requests`` patient-view calls, ``concurrency`` connections at a time.

    A minimal HTTP/1.1 keep-alive client on raw sockets, each request serialised beforehand
    with its own signed JWT, so that the client's own cost stays far below the server's
    (httpx spent more CPU per call than the server did).
    """
    import json
    from urllib.parse import urlsplit

    import jwt
    import uvloop

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    def request(i: int) -> bytes:
        now = int(time.time())
        claims = {
            "iss": "https://ehr.bench",
            "aud": url,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        body = json.dumps(
            {
                "hook": "patient-view",
                "hookInstance": uuid.uuid4().hex,
                "context": {"patientId": patients[i % len(patients)], "userId": "Practitioner/bench"},
            }
        ).encode()
        head = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    calls = [request(i) for i in range(requests)]

    async def run() -> tuple[list[float], int, Counter[int], float]:
        latencies: list[float] = []
        with_card = 0
        statuses: Counter[int] = Counter()
        queue = list(reversed(calls))

        async def worker() -> None:
            nonlocal with_card
            reader, writer = await asyncio.open_connection(host, port)
            while queue:
                payload = queue.pop()
                began = time.perf_counter()
                writer.write(payload)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - began)
                status = int(status_line.split()[1])
                statuses[status] += 1
                if status == 200 and json.loads(body)["cards"]:
                    with_card += 1
            writer.close()

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, with_card, statuses, time.perf_counter() - began

    out.put(uvloop.run(run()))


def cds_hooks(up: Up, patients: list[str], requests: int, concurrency: int) -> None:
    """Part 2."""
    url = f"http://127.0.0.1:{up.http_port}{CDS_HOOKS_PATH}/{PATIENT_VIEW}"
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_hammer, args=(url, patients, requests, concurrency, out))
    child.start()
    return_value: tuple[list[float], int, Counter[int], float] = out.get()
    child.join()
    latencies, with_card, statuses, elapsed = return_value
    timed = latencies[100:]
    print(
        f"patient-view, {concurrency} concurrent, {requests} calls: p50"
        f" {statistics.median(timed) * 1000:6.1f} ms  p95 {percentile(timed, 95) * 1000:6.1f} ms"
        f"  p99 {percentile(timed, 99) * 1000:6.1f} ms; {requests / elapsed:6.0f} calls/s;"
        f" statuses {dict(statuses)}; {with_card} answers with a card",
        flush=True,
    )


def burden(corpora: Path) -> None:
    """Part 3."""
    rules = RuleSet()
    alerts: Counter[str] = Counter()
    held: Counter[str] = Counter()
    days: set[tuple[str, str]] = set()
    timings: list[float] = []
    patients = 0
    received = datetime.now(UTC)
    bundles = sorted((corpora / "fhir" / "smart-synthea-r4").glob("*.json"))
    if not bundles:
        print(f"alert burden: no Synthea bundles under {corpora}, skipped", flush=True)
        return
    for path in bundles:
        for visits in synthea_feed(path, received_at=received):
            patients += 1
            state: PatientState | None = None
            for visit in visits:
                began = time.perf_counter()
                outcome = process(state, visit.record, rules, now=visit.at or received)
                timings.append(time.perf_counter() - began)
                state = outcome.state
                if visit.at is not None:
                    days.add((visit.record.patient_id, visit.at.date().isoformat()))
                alerts.update(a.rule_id for a in outcome.alerts)
                held.update(f"{h.finding.rule_id}:{h.reason}" for h in outcome.held)
    total = sum(alerts.values())
    print(
        f"alert burden, Synthea ({patients} patients, {len(days)} patient-days with an encounter, default"
        f" rules): {total} alerts = {total / max(len(days), 1):.3f} per patient-day; by rule {dict(alerts)};"
        f" held {dict(held)}; process() median {statistics.median(timings) * 1e6:.0f} µs"
        f" over {len(timings)} records",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    burden(args.corpora)
    for rate in args.rates:
        with tempfile.TemporaryDirectory() as tmp:
            async with clinstream_up(Path(tmp)) as up:
                print(
                    f"-- {rate:.0f} msg/s, a fresh clinstream up (embedded broker, all stages in one process)"
                )
                messages = round(rate * args.seconds)
                patients = await event_to_alert(up, rate, messages)
                print("CDS Hooks right after the feed:", end=" ")
                await asyncio.to_thread(cds_hooks, up, patients, args.hook_requests, args.concurrency)
                await asyncio.sleep(args.quiet_s)
                print(f"CDS Hooks {args.quiet_s:.0f} s later:", end=" ")
                await asyncio.to_thread(cds_hooks, up, patients, args.hook_requests, args.concurrency)
                print(f"resident memory: {peak_memory(up.pid)}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[25.0, 100.0])
    parser.add_argument("--seconds", type=float, default=20.0, help="sending time per rate")
    parser.add_argument(
        "--quiet-s", type=float, default=30.0, help="wait before CDS Hooks is measured a second time"
    )
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--hook-requests", type=int, default=2000)
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    asyncio.run(main(parser.parse_args()))
