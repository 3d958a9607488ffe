"""Separate processes as production runs them: `clinstream run STAGE`, a Milvus server, and a
sending interface engine that retries until it gets an answer (as EHR senders do).

Children are spawned without a ``preexec_fn``: forking this process (it holds gRPC threads of
pymilvus) to run Python before ``exec`` made gRPC abort the child now and then (SIGABRT,
"epoll_wait error: Bad file descriptor"); without it, subprocess uses posix_spawn.

Used by the fault, outage and scale-out tests; each test runs its own broker (the embedded
Apache Kafka, or Tansu where a test asks), so the stages use the default topic names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka import TopicPartition as KafkaPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from pymilvus import MilvusClient

from clinstream.demo import demo_messages
from clinstream.models import embedding_dir
from clinstream.runtime import EmbeddedBroker, EmbeddedKafka, free_port, terminate
from connectors.mllp_client import MllpClient
from indexer.chunking import plan_record
from indexer.ort_session import Embedder
from inference.cds.note_signals import NoteMatcher
from inference.cds.rules import process, ruleset_from
from inference.cds.state import PatientState
from kernel.errors import Hl7Error
from kernel.events import SUPPORTED_HL7_EVENTS, TOPICS, FhirRecord
from kernel.hl7v2.parser import decode_payload, parse_message, split_batch
from kernel.settings import CdsSettings
from stream.normalize import normalize_hl7
from tests.conftest import hl7_corpus_files

TOKEN = "fault-test-token-" + "x" * 24
CORPUS_STALE_AFTER_H = 24 * 365 * 50
"""Decision support's staleness limit in these tests: the corpora are years old."""


def base_env(bootstrap: str, tmp: Path, *, tansu: bool = False, **extra: str) -> dict[str, str]:
    """The environment every stage process of a test shares. On Apache Kafka producers are
    idempotent and the stateful stages transactional, as in production; Tansu has neither."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    env.update(
        CLINSTREAM_KAFKA__BOOTSTRAP=bootstrap,
        CLINSTREAM_KAFKA__ENABLE_IDEMPOTENCE="false" if tansu else "true",
        CLINSTREAM_KAFKA__TRANSACTION_TIMEOUT_MS="5000",  # a killed instance's batch is aborted soon
        CLINSTREAM_KAFKA__REPLICATION_FACTOR="1",
        CLINSTREAM_HTTP__API_TOKEN=TOKEN,
        CLINSTREAM_HTTP__HOST="127.0.0.1",
        CLINSTREAM_MLLP__HOST="127.0.0.1",
        CLINSTREAM_VAR_DIR=str(tmp),
        CLINSTREAM_MODELS__INTRA_OP_THREADS="1",
        CLINSTREAM_CDS__STALE_AFTER_H=str(CORPUS_STALE_AFTER_H),
        CLINSTREAM_LOG_LEVEL="INFO",
        # Faster group joins and failure detection on the embedded broker (tests/conftest.py).
        CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS=os.environ.get("CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS", "10000"),
    )
    env.update(extra)
    return env


class StageProcess:
    """One `clinstream run STAGE` process with fixed ports, so a restart listens where it did."""

    def __init__(self, stages: Iterable[str], env: dict[str, str], log: Path) -> None:
        self.stages = list(stages)
        self.http_port = free_port()
        self.env = env | {"CLINSTREAM_HTTP__PORT": str(self.http_port)}
        if "connectors" in self.stages:
            self.mllp_port = free_port()
            self.env["CLINSTREAM_MLLP__PORT"] = str(self.mllp_port)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _ready_lines(self) -> int:
        return self.log.read_text(errors="replace").count("clinstream ready:") if self.log.exists() else 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clinstream", "run", *self.stages],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        self.starts += 1

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self._ready_lines() < self.starts:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.stages} exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.stages} not ready after {timeout_s}s:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs (no flush, no commit, no goodbye to the group)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        terminate(self.proc, 20)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def rss_kib(self) -> int:
        """Resident memory of the process now (kB)."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples matching ``labels`` on this process's /metrics."""
        async with httpx.AsyncClient(timeout=5) as client:
            text = (
                await client.get(f"{self.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            ).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total


class MilvusServer:
    """Milvus Lite's gRPC server as its own process (several stage processes share it)."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir, self.log = data_dir, log
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 60.0) -> None:
        self._spawn()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await asyncio.to_thread(self._probe)
                return
            except Exception:
                if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    def _spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def _probe(self) -> None:
        client = MilvusClient(uri=self.uri, timeout=2)
        try:
            client.list_collections()
        finally:
            client.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        terminate(self.proc, 10)

    def rows(self, collection: str = "clinical_chunks_v2") -> list[dict[str, object]]:
        """Every chunk row (id, resource, chunk number). Milvus Lite's gRPC server sends GOAWAY
        ("too many pings") to pymilvus' keepalive now and then: a refused connection is retried."""
        for attempt in range(5):
            try:
                client = MilvusClient(uri=self.uri)
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(1)
                continue
            try:
                client.load_collection(collection)  # a restarted server comes back with it released
                found: list[dict[str, object]] = client.query(
                    collection,
                    filter='id != ""',
                    output_fields=["id", "resource_id", "chunk_no"],
                    limit=16_384,
                )
                return found
            finally:
                client.close()
        raise AssertionError("unreachable")


@dataclass
class Deployment:
    """A broker, a Milvus server and stage processes, as production runs them."""

    broker: EmbeddedBroker
    milvus: MilvusServer
    env: dict[str, str]
    procs: dict[str, StageProcess]


def own_broker(kind: str, tmp: Path, **options: int) -> EmbeddedBroker:
    """A test's own embedded broker of ``kind`` (``kafka``: its log under ``tmp/kafka``)."""
    if kind == "kafka":
        return EmbeddedKafka(tmp / "kafka", log_path=tmp / "broker.log", **options)
    return EmbeddedBroker(log_path=tmp / "broker.log", **options)


@contextlib.asynccontextmanager
async def deployment(
    tmp: Path,
    procs: Mapping[str, Sequence[str]],
    *,
    broker: str = "kafka",
    own_dirs: Sequence[str] = (),
    **extra: str,
) -> AsyncIterator[Deployment]:
    """Start a broker (``kafka`` or ``tansu``), a Milvus server and one `clinstream run` process
    per entry of ``procs`` (name → stages), wait until all are ready; stop everything on exit.
    The processes named in ``own_dirs`` get their own var dir and instance id (two instances of a
    stateful stage, as on two machines)."""
    async with own_broker(broker, tmp) as running_broker:
        milvus = MilvusServer(tmp / "milvus", tmp / "milvus.log")
        await milvus.start()
        env = base_env(
            running_broker.bootstrap,
            tmp,
            tansu=broker == "tansu",
            CLINSTREAM_MILVUS__URI=milvus.uri,
            CLINSTREAM_MILVUS__INDEX_TYPE="FLAT",
            CLINSTREAM_INDEXER__FLUSH_AGE_S="0.5",  # the last batch is searchable soon
            **extra,
        )
        running = {
            name: StageProcess(
                stages,
                env | {"CLINSTREAM_VAR_DIR": str(tmp / name), "CLINSTREAM_KAFKA__INSTANCE_ID": name}
                if name in own_dirs
                else env,
                tmp / f"{name}.log",
            )
            for name, stages in procs.items()
        }
        try:
            for proc in running.values():
                proc.start()
            await asyncio.gather(*(p.wait_ready() for p in running.values()))
            yield Deployment(running_broker, milvus, env, running)
        finally:
            for proc in running.values():
                proc.stop()
            milvus.stop()


def with_control_id(message: str, control_id: str) -> bytes:
    """The message with MSH-10 replaced, so every message of a load is told apart, and in
    original acknowledgment mode (MSH-15/16 cleared: some corpus senders ask for no ACK)."""
    segments = message.replace("\r\n", "\r").replace("\n", "\r").strip("\r").split("\r")
    sep = segments[0][3]
    fields = segments[0].split(sep)
    while len(fields) < 16:
        fields.append("")
    fields[9] = control_id
    fields[14] = fields[15] = ""
    segments[0] = sep.join(fields)
    return ("\r".join(segments) + "\r").encode()


def load_messages() -> list[str]:
    """Every message of the demo feed and the corpora (batches split) that the normalizer turns
    into FHIR: the load of the fault tests, where each accepted message must come out."""
    texts = [m.decode() for m in demo_messages()]
    for path in hl7_corpus_files():
        texts.extend(split_batch(decode_payload(path.read_bytes())).messages)
    out = []
    for text in texts:
        try:
            msg = parse_message(text)
            if (msg.message_code, msg.trigger_event) not in SUPPORTED_HL7_EVENTS:
                continue
            normalize_hl7(text, tz=ZoneInfo("UTC"))
        except Hl7Error:
            continue
        out.append(text)
    return out


@dataclass
class Sender:
    """An interface engine: each message is resent (new connection) until it gets AA/AE/AR."""

    port: int
    answers: dict[str, str] = field(default_factory=dict)
    retries: int = 0

    async def send(self, control_id: str, payload: bytes, *, give_up_s: float = 240.0) -> str:
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                async with MllpClient("127.0.0.1", self.port, timeout_s=10) as client:
                    result = await client.send(payload)
                if result.code is not None:
                    self.answers[control_id] = result.code
                    return result.code
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                pass
            self.retries += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{control_id} unanswered after {give_up_s}s")
            await asyncio.sleep(0.5)

    async def run(self, messages: list[tuple[str, bytes]], rate: float) -> None:
        """Send in order at about ``rate`` messages/s (one connection at a time, like MLLP)."""
        start = time.monotonic()
        for n, (control_id, payload) in enumerate(messages):
            await self.send(control_id, payload)
            ahead = start + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)


async def drain(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record on ``topic``, read until the broker has no more. Not bounded by ListOffsets:
    Tansu's "latest" offset lags the records written when several producers share a partition
    (seen here: 57 reported, records up to offset 59 readable)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[ConsumerRecord[bytes, bytes]] = []
        quiet = 0
        while quiet < 3:
            batches = await consumer.getmany(timeout_ms=400)
            got = [r for batch in batches.values() for r in batch]
            records.extend(got)
            quiet = 0 if got else quiet + 1
        return records
    finally:
        await consumer.stop()


def committed_offsets(bootstrap: str) -> dict[tuple[str, str, int], int]:
    """(group, topic, partition) → committed offset, for every consumer group."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    out: dict[tuple[str, str, int], int] = {}
    groups = admin.list_consumer_groups(request_timeout=10).result(timeout=10).valid
    for group in sorted(g.group_id for g in groups):
        future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
        for tp in future.result(timeout=10).topic_partitions or []:
            out[(group, tp.topic, tp.partition)] = tp.offset
    return out


def _listed_ends(bootstrap: str, partitions: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    request = {KafkaPartition(t, p): OffsetSpec.latest() for t, p in partitions}
    futures = admin.list_offsets(request, request_timeout=10) if request else {}
    return {(tp.topic, tp.partition): f.result(timeout=10).offset for tp, f in futures.items()}


async def lag_of(bootstrap: str, *, exact: bool = True) -> dict[str, int]:
    """Records not yet committed, per consumer group. ``exact``: against the records actually
    on the topics (read through); else against the broker's listed end offsets (cheap, and
    on Tansu a few records short when producers share a partition)."""
    committed = await asyncio.to_thread(committed_offsets, bootstrap)
    if exact:
        ends: dict[tuple[str, int], int] = {}
        for topic in {t for _, t, _ in committed}:
            for record in await drain(bootstrap, topic):
                key = (topic, record.partition)
                ends[key] = max(ends.get(key, 0), record.offset + 1)
    else:
        ends = await asyncio.to_thread(_listed_ends, bootstrap, {(t, p) for _, t, p in committed})
    totals: dict[str, int] = {}
    for (group, topic, partition), offset in committed.items():
        behind = ends.get((topic, partition), 0) - max(offset, 0)
        totals[group] = totals.get(group, 0) + max(behind, 0)
    return totals


async def wait_settled(
    bootstrap: str, groups: Iterable[str], timeout_s: float = 240.0, *, exact: bool = True
) -> dict[str, int]:
    """Wait until every named group has committed every record of its topics (lag 0)."""
    deadline = time.monotonic() + timeout_s
    want = set(groups)
    while True:
        lag = await lag_of(bootstrap, exact=exact)
        if want <= lag.keys() and all(lag[g] == 0 for g in want):
            return lag
        if time.monotonic() > deadline:
            raise AssertionError(f"consumer lag not back to zero: {lag}")
        await asyncio.sleep(1.0 if exact else 5.0)


async def fhir_records(bootstrap: str) -> list[tuple[int, int, FhirRecord]]:
    """(partition, offset, record) of every record on the normalized topic."""
    records = await drain(bootstrap, TOPICS.fhir)
    return [(r.partition, r.offset, FhirRecord.model_validate_json(r.value)) for r in records]


def expected_chunks(records: list[tuple[int, int, FhirRecord]]) -> dict[str, int]:
    """Chunks per indexed resource after every record is applied in log order (the indexer's
    own plan, replayed here), for resources that have any."""
    keep: dict[str, int] = {}
    for _, _, record in sorted(records, key=lambda r: (r[0], r[1])):
        keep.update(plan_record(record).keep)
    return {ref: n for ref, n in keep.items() if n}


def single_instance_alerts(records: list[tuple[int, int, FhirRecord]]) -> set[str]:
    """The ids of the alerts one uninterrupted decision-support instance raises on ``records``
    (the normalized topic, in partition and offset order), with the stage processes' settings:
    the stage's own pure rules and note matcher, replayed here without Kafka."""
    settings = CdsSettings(stale_after_h=CORPUS_STALE_AFTER_H)
    embedder = Embedder(embedding_dir(), providers=("CPUExecutionProvider",))
    rules = replace(
        ruleset_from(settings),
        note_matcher=NoteMatcher(embedder, min_cosine=settings.note_similarity_min),
    )
    states: dict[str, PatientState] = {}
    raised: set[str] = set()
    for _, _, record in sorted(records, key=lambda r: (r[0], r[1])):
        try:
            outcome = process(states.get(record.patient_id), record, rules, now=datetime.now(UTC))
        except Exception:  # noqa: S112 - the stage dead-letters such a record
            continue
        states[record.patient_id] = outcome.state
        raised |= {alert.id for alert in outcome.alerts}
    return raised
