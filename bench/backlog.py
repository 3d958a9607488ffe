"""A stage on a backlog: decision support's records/s on one core, the indexer's chunks/s on two.

Fills `ehr.fhir.v1` of an embedded Apache Kafka with normalized corpus records: every HL7 v2
corpus message the normalizer converts and the Synthea patients' encounters (`bench/synthea_feed.py`).
Then starts the stage as a deployment runs it (`clinstream run inference` or `clinstream run
indexer`, its own process) and waits until its consumer group has committed every record.

- **Decision support** (`--stage cds`): the records are copied under new patient ids until there
  are --records of them (each copy a patient of its own, so a state grows as a real one would);
  one instance (changelog replica, exactly-once transactions) pinned to one CPU with `taskset`,
  the broker on the other. With --notes-assist, drafting and assistance run in the same process
  (on the same core), as in a deployment; without it, decision support alone.
- **Indexer** (`--stage indexer`): one pass of the corpus records, no copies (a copy's chunk
  texts would repeat the original's and flatter the embedding cache), on both CPUs, into Milvus
  Lite. With --compare it runs three times on the same backlog, each on a fresh Milvus and
  consumer group: today's configuration before #28 (fp32, no cache), int8 alone, and the
  defaults (int8 on a VNNI CPU, the text cache), and prints the ratios to the first.

Prints records/s (and chunks/s) from the first commit to the last (start-up excluded), the
process's CPU time per record, the median and p95 interval between commits, and for the indexer
the share of chunk texts its cache answered (from its /metrics). With --profile, py-spy samples
the process and the top functions by own and by cumulative time are printed (--gil: only
samples holding the GIL, i.e. Python's own work).

Usage: python bench/backlog.py [--stage cds|indexer] [--records 20000] [--partitions 3] [--cpu 0]
                               [--notes-assist] [--compare] [--profile [--gil]] [--tansu]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from bench.normalize import corpus_messages  # noqa: E402
from bench.synthea_feed import synthea_feed  # noqa: E402
from clinstream.runtime import EmbeddedBroker, EmbeddedKafka, ensure_topics  # noqa: E402
from indexer.chunking import plan_record  # noqa: E402
from kernel.events import TOPICS, Envelope, FhirRecord, topic_config  # noqa: E402
from stream.normalize import normalize_hl7  # noqa: E402

CORPORA = REPO.parent / "shared" / "corpora"


def corpus_records(corpora: Path) -> list[FhirRecord]:
    """Every normalized record of the HL7 v2 corpus and of the Synthea patients' encounters."""
    out: list[FhirRecord] = []
    received = datetime.now(UTC)
    for n, text in enumerate(corpus_messages(corpora)):
        result = normalize_hl7(text, tz=ZoneInfo("UTC"))
        envelope = Envelope(
            source_system=result.sender or "CORPUS",
            source_message_id=f"c{n}-{result.control_id}",
            content_hash="-",
            received_at=received,
            trace_id=f"c{n}",
        )
        out.append(FhirRecord(envelope=envelope, patient_id=result.patient_id, resources=result.resources))
    for path in sorted((corpora / "fhir" / "smart-synthea-r4").glob("*.json")):
        for visits in synthea_feed(path, received):
            out.extend(v.record for v in visits)
    return out


def backlog(records: list[FhirRecord], total: int) -> list[tuple[bytes, bytes]]:
    """``total`` (key, value) pairs: the records in order, copy after copy, each copy's patients
    renamed (``<id>-c<copy>``), so copies are patients of their own."""
    out: list[tuple[bytes, bytes]] = []
    copy = 0
    while len(out) < total:
        for record in records:
            if len(out) >= total:
                break
            patient = record.patient_id if copy == 0 else f"{record.patient_id}-c{copy}"
            envelope = record.envelope.model_copy(
                update={"source_message_id": f"{record.envelope.source_message_id}-c{copy}"}
            )
            one = record.model_copy(update={"patient_id": patient, "envelope": envelope})
            out.append((patient.encode(), one.model_dump_json().encode()))
        copy += 1
    return out


async def fill(bootstrap: str, pairs: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=1 << 20, linger_ms=20)
    await producer.start()
    try:
        futures = [await producer.send(TOPICS.fhir, value, key=key) for key, value in pairs]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def committed_offsets(admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset in each partition of ``topic`` (none while its coordinator
    is still loading)."""
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    try:
        parts = future.result(timeout=10).topic_partitions or []
    except KafkaException:
        return {}
    return {tp.partition: tp.offset for tp in parts if tp.topic == topic}


def committed(admin: AdminClient, group: str, topic: str) -> int:
    """Records of ``topic`` the group committed (0 while its coordinator is still loading)."""
    return sum(max(offset, 0) for offset in committed_offsets(admin, group, topic).values())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile_summary(raw: Path, top: int = 25) -> None:
    """Own and cumulative sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 2)[-1] + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    print(f"\nprofile: {total} samples of the inference process (main thread and workers)")
    print(f"  {'own %':>6}  function")
    for name, n in own.most_common(top):
        print(f"  {100 * n / total:6.1f}  {name}")
    print(f"  {'cum %':>6}  function")
    for name, n in cumulative.most_common(top + 15):
        print(f"  {100 * n / total:6.1f}  {name}")


TOKEN = "bench-backlog-token-bench-backlog-token"  # noqa: S105 - the bench's own stack
GROUPS = {"cds": "cds", "indexer": "indexer"}
STAGES = {"cds": "inference", "indexer": "indexer"}
BEFORE_28 = {"CLINSTREAM_MODELS__EMBEDDING_PRECISION": "fp32", "CLINSTREAM_INDEXER__EMBEDDING_CACHE": "0"}
INT8_ONLY = {"CLINSTREAM_MODELS__EMBEDDING_PRECISION": "int8", "CLINSTREAM_INDEXER__EMBEDDING_CACHE": "0"}


@dataclasses.dataclass
class Result:
    label: str
    records: int
    seconds: float
    cpu_s: float
    steps: list[float]
    cache: tuple[float, float] | None = None  # hits, misses


def _metric(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and f'result="{label}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def run_stage(
    args: argparse.Namespace, bootstrap: str, folder: Path, total: int, label: str, extra: dict[str, str]
) -> Result:
    """Start the stage on ``folder`` and wait until its group committed ``total`` records."""
    group = GROUPS[args.stage]
    env = os.environ | {
        "CLINSTREAM_KAFKA__BOOTSTRAP": bootstrap,
        "CLINSTREAM_KAFKA__PARTITIONS": str(args.partitions),
        "CLINSTREAM_VAR_DIR": str(folder),
        "CLINSTREAM_LOG_LEVEL": "WARNING",
        "CLINSTREAM_NOTES__ENABLED": str(args.notes_assist).lower(),
        "CLINSTREAM_NOTES__GENERATOR": "false",
        "CLINSTREAM_ASSIST__ENABLED": str(args.notes_assist).lower(),
        "CLINSTREAM_HTTP__PORT": "0",
        "CLINSTREAM_HTTP__API_TOKEN": TOKEN,
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    if args.stage == "cds":
        env |= {"OMP_NUM_THREADS": "1", "CLINSTREAM_MODELS__INTRA_OP_THREADS": "1"}
    command = [sys.executable, "-m", "clinstream", "run", STAGES[args.stage]]
    if args.cpu is not None:
        command = ["taskset", "-c", str(args.cpu), *command]
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    spy: subprocess.Popen[bytes] | None = None
    raw = folder.parent / f"profile-{folder.name}.txt"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        first: tuple[float, int, float] | None = None
        steps: list[float] = []
        last_change = time.perf_counter()
        seen = 0
        deadline = time.monotonic() + args.timeout_s
        while True:
            await asyncio.sleep(0.05)
            if proc.poll() is not None:
                raise SystemExit(f"the {STAGES[args.stage]} process exited with {proc.returncode}")
            done = await asyncio.to_thread(committed, admin, group, TOPICS.fhir)
            now = time.perf_counter()
            if done != seen:
                if first is None:
                    first = (now, done, cpu_seconds(proc.pid))
                    if args.profile:
                        spy = subprocess.Popen(
                            [
                                shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                *("record", "--pid", str(proc.pid), "--format", "raw", "--rate", "200"),
                                *("--output", str(raw), "--threads", "--nonblocking"),
                                *(["--gil"] if args.gil else []),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                else:
                    steps.append(now - last_change)
                seen, last_change = done, now
            if done >= total:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {done} of {total} records committed")
        assert first is not None
        result = Result(
            label, total - first[1], last_change - first[0], cpu_seconds(proc.pid) - first[2], steps
        )
        ports = [m.group(1) for line in lines if (m := re.search(r"http=http://[^:]+:(\d+)", line))]
        if args.stage == "indexer" and ports:
            async with httpx.AsyncClient() as http:
                answer = await http.get(
                    f"http://127.0.0.1:{ports[0]}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
                )
            name = "clinstream_index_embedding_cache_total"
            result.cache = (_metric(answer.text, name, "hit"), _metric(answer.text, name, "miss"))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            if raw.is_file():
                profile_summary(raw)
        return result
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        admin.delete_consumer_groups([group], request_timeout=10)[group].exception(timeout=10)


def report(result: Result, chunks_per_record: float, base: Result | None) -> None:
    rate = result.records / result.seconds
    line = f"  {result.label:<34} {result.records} records in {result.seconds:6.2f} s: {rate:8,.0f} records/s"
    if chunks_per_record:
        line += f", {rate * chunks_per_record:7,.0f} chunks/s"
    per_record = 1000 * result.cpu_s / result.records
    line += f"; CPU {per_record:.3f} ms a record ({100 * result.cpu_s / result.seconds:.0f} % of a core)"
    if base is not None and base is not result:
        line += f"; x{rate / (base.records / base.seconds):.2f}"
    print(line, flush=True)
    if result.steps:
        steps = sorted(result.steps)
        print(
            f"  {'':<34} commit interval median {1000 * steps[len(steps) // 2]:.0f} ms,"
            f" p95 {1000 * steps[int(len(steps) * 0.95)]:.0f} ms over {len(steps)} commits"
        )
    if result.cache is not None and sum(result.cache):
        hits, misses = result.cache
        share = hits / (hits + misses)
        print(f"  {'':<34} embedding cache: {hits:.0f} of {hits + misses:.0f} chunk texts ({share:.0%})")


async def run(args: argparse.Namespace) -> None:
    records = corpus_records(args.corpora)
    if args.stage == "cds":
        pairs = backlog(records, args.records)
    else:
        pairs = [(r.patient_id.encode(), r.model_dump_json().encode()) for r in records]
    chunks = sum(len(plan_record(r).upserts) for r in records) if args.stage == "indexer" else 0
    patients = len({k for k, _ in pairs})
    print(
        f"backlog: {len(pairs)} records of {patients} patients from {len(records)} corpus records"
        f"{f', {chunks} chunks' if chunks else ''}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="backlog-"))
    broker: EmbeddedBroker = EmbeddedBroker() if args.tansu else EmbeddedKafka(tmp / "kafka")
    broker.start()
    await broker.wait_ready(timeout_s=60)
    try:
        if broker.pid is not None and args.cpu is not None:
            other = {c for c in os.sched_getaffinity(0) if c != args.cpu} or {args.cpu}
            os.sched_setaffinity(broker.pid, other)
        topics = [getattr(TOPICS, f.name) for f in dataclasses.fields(TOPICS)]
        await ensure_topics(
            broker.bootstrap,
            topics,
            partitions=args.partitions,
            replication_factor=1,
            configs=lambda name: topic_config(TOPICS, name, replication_factor=1),
        )
        await fill(broker.bootstrap, pairs)
        what = (
            "decision support" + (" + notes + assist" if args.notes_assist else "")
            if args.stage == "cds"
            else "indexer"
        )
        where = f"on CPU {args.cpu}" if args.cpu is not None else f"on {len(os.sched_getaffinity(0))} CPUs"
        print(f"{what}, one instance {where}, {broker.label}, {args.partitions} partitions:", flush=True)
        variants = [("defaults", {})]
        if args.compare:
            variants = [("before #28 (fp32, no cache)", BEFORE_28), ("int8, no cache", INT8_ONLY), *variants]
        base: Result | None = None
        for n, (label, extra) in enumerate(variants):
            result = await run_stage(args, broker.bootstrap, tmp / f"var{n}", len(pairs), label, extra)
            base = base or result
            report(result, chunks / len(pairs) if chunks else 0.0, base)
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections while the broker starts
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin the instance to (cds default: 0)")
    parser.add_argument("--stage", choices=("cds", "indexer"), default="cds")
    parser.add_argument("--notes-assist", action="store_true")
    parser.add_argument("--compare", action="store_true", help="indexer: before #28, int8 alone, defaults")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--gil", action="store_true", help="profile: only samples holding the GIL")
    parser.add_argument("--tansu", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=900)
    args = parser.parse_args()
    if args.cpu is None and args.stage == "cds":
        args.cpu = 0
    if args.cpu is not None and args.cpu < 0:
        args.cpu = None
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
