"""Decision support on a backlog: records/s of one `clinstream run inference` instance on one core.

Fills `ehr.fhir.v1` of an embedded Apache Kafka with normalized corpus records: every HL7 v2
corpus message the normalizer converts and the Synthea patients' encounters (`bench/synthea_feed.py`),
copied under new patient ids until there are --records of them (each copy is a patient of its
own, so a patient's state grows as the real one's would, no faster). Then starts one inference
process (the deployment's `clinstream run inference`: the consumer group `cds`, its changelog
replica, exactly-once transactions) pinned to one CPU with `taskset`, the broker on the other,
and waits until the group has committed every record.

Prints records/s from the first commit to the last (start-up excluded), the median and p95 of
the batches' commit intervals, and the process's CPU time per record. With --notes-assist the
drafting and assistance consumers run in the same process as they do in a deployment (on the
same core); without it, decision support alone. With --profile, py-spy samples the process
(native frames off) and the top functions by own and by cumulative time are printed.

Usage: python bench/cds_backlog.py [--records 20000] [--partitions 3] [--cpu 0] [--notes-assist]
                                   [--profile] [--tansu]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaProducer  # noqa: E402
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402

from bench.normalize import corpus_messages  # noqa: E402
from bench.synthea_feed import synthea_feed  # noqa: E402
from clinstream.runtime import EmbeddedBroker, EmbeddedKafka, ensure_topics  # noqa: E402
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


def committed(admin: AdminClient, group: str, topic: str) -> int:
    """Records of ``topic`` the group committed (0 while its coordinator is still loading)."""
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    try:
        future.result(timeout=10)
    except KafkaException:
        return 0
    return sum(
        max(tp.offset, 0) for tp in future.result(timeout=10).topic_partitions or [] if tp.topic == topic
    )


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


async def run(args: argparse.Namespace) -> None:
    records = corpus_records(args.corpora)
    pairs = backlog(records, args.records)
    patients = len({k for k, _ in pairs})
    print(f"backlog: {len(pairs)} records of {patients} patients ({len(records)} corpus records, copied)")
    tmp = Path(tempfile.mkdtemp(prefix="cds-backlog-"))
    broker: EmbeddedBroker = EmbeddedBroker() if args.tansu else EmbeddedKafka(tmp / "kafka")
    broker.start()
    await broker.wait_ready(timeout_s=60)
    proc: subprocess.Popen[bytes] | None = None
    spy: subprocess.Popen[bytes] | None = None
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
        started = time.perf_counter()
        await fill(broker.bootstrap, pairs)
        print(f"filled {TOPICS.fhir} in {time.perf_counter() - started:.1f} s")
        env = os.environ | {
            "CLINSTREAM_KAFKA__BOOTSTRAP": broker.bootstrap,
            "CLINSTREAM_KAFKA__PARTITIONS": str(args.partitions),
            "CLINSTREAM_VAR_DIR": str(tmp / "var"),
            "CLINSTREAM_LOG_LEVEL": "WARNING",
            "CLINSTREAM_NOTES__ENABLED": str(args.notes_assist).lower(),
            "CLINSTREAM_NOTES__GENERATOR": "false",
            "CLINSTREAM_ASSIST__ENABLED": str(args.notes_assist).lower(),
            "CLINSTREAM_HTTP__PORT": "0",
            "CLINSTREAM_HTTP__API_TOKEN": "bench-cds-backlog-token-bench-cds-backlog",
            "OMP_NUM_THREADS": "1",
            "CLINSTREAM_MODELS__INTRA_OP_THREADS": "1",
        }
        command = [sys.executable, "-m", "clinstream", "run", "inference"]
        if args.cpu is not None:
            command = ["taskset", "-c", str(args.cpu), *command]
        proc = subprocess.Popen(command, env=env, cwd=REPO)
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        total = len(pairs)
        first: tuple[float, int, float] | None = None
        steps: list[float] = []
        last_change = time.perf_counter()
        seen = 0
        deadline = time.monotonic() + args.timeout_s
        raw = tmp / "profile.txt"
        while True:
            await asyncio.sleep(0.05)
            if proc.poll() is not None:
                raise SystemExit(f"the inference process exited with {proc.returncode}")
            done = await asyncio.to_thread(committed, admin, "cds", TOPICS.fhir)
            now = time.perf_counter()
            if done != seen:
                if first is None:
                    first = (now, done, cpu_seconds(proc.pid))
                    if args.profile:
                        spy = subprocess.Popen(
                            [
                                shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                "record",
                                "--pid",
                                str(proc.pid),
                                "--format",
                                "raw",
                                "--rate",
                                "200",
                                "--output",
                                str(raw),
                                "--threads",
                                "--nonblocking",
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
        elapsed = last_change - first[0]
        cpu = cpu_seconds(proc.pid) - first[2]
        processed = total - first[1]
        print(
            f"decision support{' + notes + assist' if args.notes_assist else ''}, one instance"
            f"{f' on CPU {args.cpu}' if args.cpu is not None else ''}, "
            f"{broker.label}, {args.partitions} partitions:"
        )
        print(
            f"  {processed} records in {elapsed:.2f} s from the first commit:"
            f" {processed / elapsed:,.0f} records/s"
        )
        print(
            f"  CPU {cpu:.2f} s: {1000 * cpu / processed:.3f} ms a record "
            f"({100 * cpu / elapsed:.0f} % of one core)"
        )
        if steps:
            steps.sort()
            print(
                f"  commit interval: median {1000 * steps[len(steps) // 2]:.0f} ms, "
                f"p95 {1000 * steps[int(len(steps) * 0.95)]:.0f} ms over {len(steps)} commits"
            )
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            if raw.is_file():
                profile_summary(raw)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections while the broker starts
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin the instance to (-1: not pinned)")
    parser.add_argument("--notes-assist", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--gil", action="store_true", help="profile: only samples holding the GIL")
    parser.add_argument("--tansu", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=900)
    args = parser.parse_args()
    if args.cpu < 0:
        args.cpu = None
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
