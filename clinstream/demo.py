"""`clinstream demo`: the bundled feed through a real MLLP socket, end to end, with a summary.

Starts the whole embedded deployment, sends `demo_feed.hl7`, follows the normalized,
alert and dead-letter topics until every accepted message is accounted for and the index
has caught up, runs one patient-scoped semantic search, prints the figures and stops
everything. Exit status 0 only when every message is accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from clinstream.settings import Settings
from clinstream.stack import Stack, running_stack
from connectors.mllp_client import MllpClient
from indexer.chunking import plan_record
from indexer.query import Hit, build_filter, quote
from kernel.events import Alert, DeadLetter, FhirRecord, Topics, patient_key
from kernel.hl7v2.parser import parse_message, patient_identifier

SEARCH_MRN = ("MERCY", "100002")
SEARCH_QUESTION = "potassium level"
WAIT_S = 90.0


def demo_messages() -> list[bytes]:
    """The bundled feed, one HL7 message per item, CR segment terminators."""
    text = resources.files("clinstream").joinpath("demo_feed.hl7").read_text()
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    return [b.replace("\n", "\r").encode() + b"\r" for b in blocks]


@dataclass
class Observed:
    """What the demo saw on the output topics."""

    records: dict[str, FhirRecord] = field(default_factory=dict)
    alerts: dict[str, Alert] = field(default_factory=dict)
    dead: list[DeadLetter] = field(default_factory=list)
    resources: Counter[str] = field(default_factory=Counter)
    polls: int = 0
    """Polls of the output topics finished: one begun after a commit has read what it committed."""


async def _follow(bootstrap: str, topics: Topics, seen: Observed, stop: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",  # alerts of an aborted decision-support batch never show
    )
    await consumer.start()
    try:
        parts = [
            TopicPartition(t, p)
            for t in (topics.fhir, topics.alerts, topics.deadletter)
            for p in (consumer.partitions_for_topic(t) or await _partitions(consumer, t))
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                for r in records:
                    if tp.topic == topics.fhir:
                        rec = FhirRecord.model_validate_json(r.value)
                        seen.records[rec.envelope.trace_id] = rec
                    elif tp.topic == topics.alerts:
                        alert = Alert.model_validate_json(r.value)
                        seen.alerts[alert.id] = alert
                    else:
                        seen.dead.append(DeadLetter.model_validate_json(r.value))
            seen.polls += 1
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata refresh for assign()
    return consumer.partitions_for_topic(topic) or {0}


async def run_demo(settings: Settings) -> int:
    """Run the demo; returns the process exit status."""
    messages = demo_messages()
    started = time.perf_counter()
    async with running_stack(settings) as stack:
        seen = Observed()
        stop = asyncio.Event()
        follower = asyncio.create_task(_follow(stack.bootstrap, stack.topics, seen, stop))
        acks: Counter[str] = Counter()
        send_started = time.perf_counter()
        async with MllpClient("127.0.0.1", stack.mllp_port) as client:
            for payload in messages:
                result = await client.send(payload)
                acks[result.code or "none"] += 1
        send_s = time.perf_counter() - send_started
        ok = await _wait_until_settled(stack, seen, acks, messages)
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        hits = await asyncio.to_thread(stack.query.search, patient_key(*SEARCH_MRN), SEARCH_QUESTION, k=3)
        suggested = await _assistance(stack, sorted({rec.patient_id for rec in seen.records.values()}))
        _print_summary(stack, messages, acks, seen, hits, send_s, time.perf_counter() - started, ok)
        _print_assistance(suggested)
        if stack.dashboard_url:
            login = stack.dashboard_login
            print(
                f"  dashboard              {stack.dashboard_url}"
                + (f" (log in as {login[0]} / {login[1]})" if login else "")
            )
            if sys.stdin.isatty():
                print("  the demo keeps running for the dashboard: press Ctrl-C to stop", flush=True)
                with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
                    await asyncio.Event().wait()
    return 0 if ok else 1


def _expected_chunks(seen: Observed) -> set[str]:
    return {c.id for rec in seen.records.values() for c in plan_record(rec).upserts}


async def _wait_until_settled(
    stack: Stack, seen: Observed, acks: Counter[str], messages: list[bytes]
) -> bool:
    accepted = acks["AA"]
    patients = sorted(
        {patient_key(*patient_identifier(parse_message(m.decode()))) for m in messages if _readable(m)}
    )
    expr = f"patient in [{', '.join(quote(p) for p in patients)}]"
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        normalizer_dead = sum(1 for d in seen.dead if d.stage == "normalizer")
        if len(seen.records) + normalizer_dead >= accepted and _decided(len(seen.records)):
            chunks = _expected_chunks(seen)
            if await asyncio.to_thread(stack.store.count, expr) >= len(chunks):
                # Decision support committed its alerts with its last batch: two more polls of
                # the follower, the second begun after that commit, have read them all.
                read = seen.polls + 2
                for _ in range(200):  # 10 s; the follower ends a poll at least every 200 ms
                    if seen.polls >= read:
                        return True
                    await asyncio.sleep(0.05)
                return False
        await asyncio.sleep(0.25)
    return False


def _decided(normalized: int) -> bool:
    """Whether decision support (in this process) finished as many records as were normalized."""
    done = REGISTRY.get_sample_value("clinstream_stage_records_total", {"stage": "cds"})
    return (done or 0) >= normalized


def _readable(payload: bytes) -> bool:
    try:
        patient_identifier(parse_message(payload.decode()))
    except ValueError:
        return False
    return True


async def _assistance(stack: Stack, patients: list[str]) -> list[tuple[str, str, str]]:
    """Each patient's diagnosis and treatment suggestions, asked over the API as a client would:
    (kind, what, rule)."""
    found: list[tuple[str, str, str]] = []
    if not stack.settings.assist.enabled:
        return found
    headers = {"Authorization": f"Bearer {stack.api_token}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", headers=headers) as http:
        for patient in patients:
            for route, kind in (("/assist/diagnoses", "diagnosis"), ("/assist/treatments", "treatment")):
                for _ in range(50):  # the stage keeps its charts from the same topic: it may trail
                    response = await http.post(route, json={"patient_id": patient})
                    if response.status_code != 404:
                        break
                    await asyncio.sleep(0.1)
                if response.status_code != 200:
                    found.append(("failed", f"{route} answered {response.status_code}", ""))
                    continue
                for s in response.json()["suggestions"]:
                    concept = s.get("code") or s.get("medication") or s.get("test") or {}
                    what = (concept.get("coding") or [{}])[0].get("display", "")
                    if kind == "treatment":
                        what = f"{s['kind']} {what} for {s['for']['coding'][0]['display']}"
                    found.append((kind, what, f"{s['rule']['id']} v{s['rule']['version']}"))
    return found


def _print_assistance(found: list[tuple[str, str, str]]) -> None:
    kinds = Counter(kind for kind, _, _ in found)
    counts = f"{kinds['diagnosis']} possible diagnoses, {kinds['treatment']} treatment suggestions"
    if kinds["failed"]:
        counts += f" ({kinds['failed']} requests failed)"
    print(f"  assistance             {counts}")
    for kind, what, rule in found[:6]:
        print(f"    - {kind}: {what} ({rule})")


def _print_summary(
    stack: Stack,
    messages: list[bytes],
    acks: Counter[str],
    seen: Observed,
    hits: list[Hit],
    send_s: float,
    total_s: float,
    ok: bool,
) -> None:
    resources: Counter[str] = Counter(
        r["resourceType"] for rec in seen.records.values() for r in rec.resources
    )
    patients = {rec.patient_id for rec in seen.records.values()}
    chunks = _expected_chunks(seen)
    print()
    print("clinstream demo — summary")
    kind = stack.embedded_broker.label if stack.embedded_broker else "external"
    print(f"  broker                 {stack.bootstrap} ({kind})")
    print(f"  milvus                 {stack.settings.milvus.uri or stack.settings.milvus_lite_path}")
    print(
        f"  embedding model        {stack.embedder.name} {stack.embedder.precision} on "
        f"{', '.join(stack.embedder.providers)}"
    )
    print(f"  messages in            {len(messages)} over MLLP in {send_s:.2f} s")
    print(f"  ACK codes              {', '.join(f'{k} {v}' for k, v in sorted(acks.items()))}")
    print(f"  normalized records     {len(seen.records)} for {len(patients)} patients")
    print(f"  FHIR resources         {', '.join(f'{k} {v}' for k, v in sorted(resources.items()))}")
    print(f"  chunks indexed         {len(chunks)}")
    print(f"  alerts raised          {len(seen.alerts)}")
    for alert in seen.alerts.values():
        print(f"    - [{alert.severity}] {alert.summary} ({alert.rule_id} v{alert.rule_version})")
    flagged = [rec for rec in seen.records.values() if rec.issues]
    print(f"  with quality issues    {len(flagged)} converted despite them")
    for rec in flagged:
        for issue in rec.issues:
            print(
                f"    - {issue.severity} {issue.code} {issue.location} "
                f"control_id={rec.envelope.source_message_id}: {issue.text}"
            )
    print(f"  dead letters           {len(seen.dead)}")
    for d in seen.dead:
        print(f"    - {d.stage}: {d.error_type} {d.location or ''} control_id={d.control_id}: {d.reason}")
    print(
        f'  search (patient {SEARCH_MRN[0]}|{SEARCH_MRN[1]}, "{SEARCH_QUESTION}", filter '
        f"{build_filter(patient_key(*SEARCH_MRN))}):"
    )
    for h in hits:
        print(f"    - {h.score:.3f} {h.resource_id}: {h.text}")
    print(
        f"  result                 {'OK: every accepted message accounted for' if ok else 'INCOMPLETE'}"
        f" in {total_s:.1f} s"
    )
