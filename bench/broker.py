"""The embedded brokers and the changelog-backed state.

1. **Start-up and memory.** The embedded Apache Kafka (`clinstream.runtime.EmbeddedKafka`: KRaft,
   256 MiB heap, serial collector) started --runs times on a fresh folder (the log formatted
   first) and --runs times again on the same folder (a restart); then Tansu. Prints the median
   seconds to answering a metadata request, and the broker's resident memory right after and
   after the deployment's topics were created and 5,000 records of 2 kB were written.
2. **Restore.** The decision-support state of --patients patients (each one a real state: the
   stage's own rules applied to the bundled demo feed's records of one patient, copied under new
   patient ids; about 3 kB each) is written to a compacted `cds.state.v1` of 6 partitions in
   transactions of 500, as the stage writes it. Then an instance with an empty disk reads it into
   its replica (`kernel.changelog_kafka.ChangelogTailer`): prints the seconds to be caught up
   with all partitions (what a new instance waits before its first record), --runs times, median.
   A restart on a kept disk reads only the tail: printed too.
3. **A transaction.** What a stateful stage's batch costs on the embedded Apache Kafka: begin,
   three records, the input offsets, commit; 70 of them back to back (the first 10 not counted),
   then 70 with a 30 ms pause between them, with the stages' retry backoff and aiokafka's default
   (100 ms). Prints the median and p95 of a transaction and of its records becoming visible.

Usage: python bench/broker.py [--runs 3] [--patients 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from clinstream.demo import demo_messages
from clinstream.runtime import EmbeddedBroker, EmbeddedKafka, ensure_topics
from inference.cds.rules import process, ruleset_from
from inference.cds.state import PatientState
from kernel.changelog_kafka import ChangelogTailer
from kernel.changelog_store import ChangelogTable
from kernel.errors import Hl7Error
from kernel.events import Envelope, FhirRecord, Topics, topic_config
from kernel.kafka import TXN_RETRY_BACKOFF_MS
from kernel.settings import CdsSettings, KafkaSettings, producer_config
from stream.normalize import normalize_hl7

TOPICS = Topics()


def _rss_mib(pid: int | None) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+)", status)
    return int(found.group(1)) / 1024 if found else float("nan")


async def _load(bootstrap: str) -> None:
    await ensure_topics(
        bootstrap,
        TOPICS.all(),
        partitions=6,
        replication_factor=1,
        configs=lambda name: topic_config(TOPICS, name, replication_factor=1),
    )
    producer = AIOKafkaProducer(**producer_config(KafkaSettings(), bootstrap, tansu=False))
    await producer.start()
    try:
        payload = b"x" * 2048
        for n in range(0, 5000, 500):
            sent = [
                await producer.send(TOPICS.fhir, payload, key=f"p{(n + i) % 97}".encode()) for i in range(500)
            ]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def _start(broker: EmbeddedBroker, *, load: bool, tansu: bool = False) -> tuple[float, float, float]:
    started = time.perf_counter()
    async with broker:
        ready = time.perf_counter() - started
        idle = _rss_mib(broker.pid)
        if load and not tansu:
            await _load(broker.bootstrap)
        loaded = _rss_mib(broker.pid)
    return ready, idle, loaded


async def startup(runs: int) -> None:
    for label in ("fresh folder", "restart on its folder"):
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for run in range(runs):
                folder = Path(tmp) / (f"k{run}" if label == "fresh folder" else "k")
                results.append(await _start(EmbeddedKafka(folder), load=True))
        ready, idle, loaded = (statistics.median(r[i] for r in results) for i in range(3))
        print(
            f"Apache Kafka 4.4, {label}: ready in {ready:.2f} s (median of {runs}); "
            f"resident {idle:.0f} MiB idle, {loaded:.0f} MiB after topics + 5,000 records",
            flush=True,
        )
    tansu = [await _start(EmbeddedBroker(), load=False, tansu=True) for _ in range(runs)]
    print(
        f"Tansu: ready in {statistics.median(r[0] for r in tansu):.2f} s; "
        f"resident {statistics.median(r[1] for r in tansu):.0f} MiB idle",
        flush=True,
    )


def _template_state() -> PatientState:
    """The state the stage keeps for the demo feed's busiest patient."""
    rules = ruleset_from(CdsSettings(stale_after_h=24 * 365 * 50))
    states: dict[str, PatientState] = {}
    for n, payload in enumerate(demo_messages()):
        try:
            normalized = normalize_hl7(payload.decode(), tz=ZoneInfo("UTC"))
        except Hl7Error:
            continue
        if normalized.patient_id is None:
            continue
        envelope = Envelope(
            source_system="demo",
            source_message_id=str(n),
            content_hash="-",
            received_at=datetime.now(UTC),
            trace_id="-",
            message_type="-",
        )
        record = FhirRecord(
            envelope=envelope, patient_id=normalized.patient_id, resources=normalized.resources
        )
        states[record.patient_id] = process(
            states.get(record.patient_id), record, rules, now=datetime.now(UTC)
        ).state
    return max(states.values(), key=lambda s: len(s.model_dump_json()))


async def restore(runs: int, patients: int) -> None:
    template = _template_state()
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedKafka(Path(tmp) / "kafka") as broker:
            await ensure_topics(
                broker.bootstrap,
                [TOPICS.cds_state],
                partitions=6,
                replication_factor=1,
                configs=lambda name: topic_config(TOPICS, name, replication_factor=1),
            )
            producer = AIOKafkaProducer(
                **producer_config(KafkaSettings(), broker.bootstrap, tansu=False), transactional_id="bench"
            )
            await producer.start()
            size = 0
            try:
                for start in range(0, patients, 500):
                    async with producer.transaction():
                        for n in range(start, min(patients, start + 500)):
                            value = (
                                template.model_copy(update={"patient_id": f"p{n:07d}"})
                                .model_dump_json()
                                .encode()
                            )
                            size += len(value)
                            await producer.send(
                                TOPICS.cds_state, value, key=f"p{n:07d}".encode(), partition=n % 6
                            )
            finally:
                await producer.stop()
            print(
                f"changelog: {patients:,} patients' state, {size / patients / 1024:.1f} kB each", flush=True
            )
            cold = []
            for run in range(runs):
                table = ChangelogTable(Path(tmp) / f"replica{run}.sqlite", "patient_state")
                tailer = ChangelogTailer(broker.bootstrap, TOPICS.cds_state, table, read_committed=True)
                started = time.perf_counter()
                await tailer.start()
                await tailer.caught_up()
                cold.append(time.perf_counter() - started)
                assert table.count() == patients, table.count()
                await tailer.stop()
                if run == runs - 1:  # a restart on the same disk: only the tail is read
                    again = ChangelogTailer(broker.bootstrap, TOPICS.cds_state, table, read_committed=True)
                    started = time.perf_counter()
                    await again.start()
                    await again.caught_up()
                    warm = time.perf_counter() - started
                    await again.stop()
                table.close()
            median = statistics.median(cold)
            print(
                f"restore on an empty disk: {patients:,} patients in {median:.2f} s "
                f"({patients / median:,.0f} patients/s; median of {runs}); "
                f"restart on a kept disk: {warm:.2f} s",
                flush=True,
            )


async def _transactions(
    bootstrap: str, *, backoff_ms: int, pause_s: float
) -> tuple[list[float], list[float]]:
    producer = AIOKafkaProducer(
        **producer_config(KafkaSettings(), bootstrap, tansu=False),
        transactional_id=f"bench-{backoff_ms}-{pause_s}",
        retry_backoff_ms=backoff_ms,
    )
    consumer = AIOKafkaConsumer(TOPICS.fhir, bootstrap_servers=bootstrap, group_id="bench-txn")
    await producer.start()
    await consumer.start()
    whole, visible = [], []
    try:
        for n in range(70):
            started = time.perf_counter()
            await producer.begin_transaction()
            sent = [await producer.send(TOPICS.alerts, b"x" * 500, key=f"p{k}".encode()) for k in range(3)]
            acked: list[float] = []
            for future in sent:  # as the stage does: offsets and commit without waiting for the acks
                future.add_done_callback(lambda _, into=acked: into.append(time.perf_counter()))
            await producer.send_offsets_to_transaction({TopicPartition(TOPICS.fhir, 0): n + 1}, "bench-txn")
            await producer.commit_transaction()
            shown = max(acked)
            if n >= 10:
                whole.append(time.perf_counter() - started)
                visible.append(shown - started)
            await asyncio.sleep(pause_s)
    finally:
        await producer.stop()
        await consumer.stop()
    return whole, visible


async def transactions() -> None:
    def ms(values: list[float], q: float) -> float:
        return sorted(values)[int(q * (len(values) - 1))] * 1000

    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedKafka(Path(tmp) / "kafka") as broker:
            await _load(broker.bootstrap)
            for backoff in (TXN_RETRY_BACKOFF_MS, 100):
                for pause in (0.0, 0.03):
                    whole, visible = await _transactions(broker.bootstrap, backoff_ms=backoff, pause_s=pause)
                    how = "back to back" if not pause else "30 ms apart"
                    print(
                        f"transaction, retry backoff {backoff} ms, {how}: "
                        f"median {ms(whole, 0.5):.1f} ms, p95 {ms(whole, 0.95):.1f} ms; "
                        f"records visible after median {ms(visible, 0.5):.1f} ms",
                        flush=True,
                    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--patients", type=int, default=20_000)
    args = parser.parse_args()
    await startup(args.runs)
    await restore(args.runs, args.patients)
    await transactions()


if __name__ == "__main__":
    asyncio.run(main())
