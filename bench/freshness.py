"""Event → searchable latency: HL7 messages over MLLP at a steady rate, until their chunks can
be found in Milvus, through the whole embedded stack.

Runs `clinstream up`'s stack in this process (embedded Tansu broker, MLLP listener,
normalizer, indexer with the ONNX embedder and Milvus Lite, default settings), a fresh one
on a fresh data directory for each rate (the same messages give the same chunk ids). Corpus
messages that carry a patient and that the normalizer converts are sent once each, with
fresh control ids, paced at --rate messages/s over one connection that waits for each ACK
(as interface engines do). A follower reads `ehr.fhir.v1` to learn each message's chunk ids
(`indexer.chunking.plan_record`, what the indexer writes); a poller asks Milvus every
--poll-ms which of the pending chunk ids exist. A message is searchable when all of its
chunks are; its latency runs from the send of the message to the poll that found the last
one (so it includes up to one poll interval). Messages refused with an AE/AR, or that yield
no chunk, are counted apart. Stage logs are silenced below ERROR (dead letters would flood
the output).

Prints p50/p95/p99/max per rate, the embedding throughput the indexer had (chunks/s), and
how many messages were still not searchable at the end.

Usage: python bench/freshness.py [--rates 25 100] [--messages 400] [--poll-ms 100]


"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402

from bench.mllp_ingest import control_id_template, corpus_messages  # noqa: E402
from bench.synthetic import percentile  # noqa: E402
from clinstream.settings import Settings  # noqa: E402
from clinstream.stack import Stack, running_stack  # noqa: E402
from connectors.mllp_client import MllpClient  # noqa: E402
from indexer.chunking import plan_record  # noqa: E402
from kernel.events import FhirRecord  # noqa: E402
from stream.convert import convert_text  # noqa: E402

SETTLE_S = 120.0


async def follow(stack: Stack, chunks_of: dict[str, set[str]], stop: asyncio.Event) -> None:
    """Chunk ids per source control id, from the normalized topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata for assign()
        parts = [
            TopicPartition(stack.topics.fhir, p)
            for p in consumer.partitions_for_topic(stack.topics.fhir) or ()
        ]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for r in records:
                    rec = FhirRecord.model_validate_json(r.value)
                    ids = {c.id for c in plan_record(rec).upserts}
                    chunks_of.setdefault(rec.envelope.source_message_id, set()).update(ids)
    finally:
        await consumer.stop()


async def run_rate(stack: Stack, texts: list[str], rate: float, tag: str, poll_s: float) -> None:
    templates = [control_id_template(t) for t in texts]
    sent_at: dict[str, float] = {}
    refused = 0
    chunks_of: dict[str, set[str]] = {}
    found_at: dict[str, float] = {}
    found_chunks: set[str] = set()
    stop = asyncio.Event()
    follower = asyncio.create_task(follow(stack, chunks_of, stop))
    polls: list[float] = []

    async def poll() -> None:
        while not stop.is_set():
            await asyncio.sleep(poll_s)
            pending = [c for mid, ids in chunks_of.items() if mid not in found_at for c in ids - found_chunks]
            started = time.perf_counter()
            found_chunks.update(await asyncio.to_thread(stack.store.existing, pending))
            now = time.perf_counter()
            if pending:
                polls.append(now - started)
            for mid, ids in list(chunks_of.items()):
                if mid not in found_at and mid in sent_at and ids and ids <= found_chunks:
                    found_at[mid] = now

    poller = asyncio.create_task(poll())
    start = time.perf_counter()
    async with MllpClient("127.0.0.1", stack.mllp_port) as client:
        for n, (before, after) in enumerate(templates):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            control = f"{tag}N{n}"
            sent = time.perf_counter()
            result = await client.send(before + control.encode() + after)
            if result.code == "AA":
                sent_at[control] = sent
            else:
                refused += 1
    send_s = time.perf_counter() - start
    deadline = time.perf_counter() + SETTLE_S
    while time.perf_counter() < deadline:
        waiting = [m for m in sent_at if m not in found_at and chunks_of.get(m, {None})]
        if not waiting and len(chunks_of) >= len(sent_at):
            break
        await asyncio.sleep(0.2)
    stop.set()
    for task in (follower, poller):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    latencies = [found_at[m] - sent_at[m] for m in found_at if m in sent_at]
    chunkless = sum(1 for m in sent_at if m in chunks_of and not chunks_of[m])
    missing = len(sent_at) - len(latencies) - chunkless
    total_chunks = sum(len(chunks_of.get(m, ())) for m in found_at)
    span = max(found_at.values()) - start if found_at else 0.0
    print(
        f"rate {rate:5.0f} msg/s (sent {len(templates)} in {send_s:5.1f} s): searchable p50"
        f" {statistics.median(latencies):5.2f} s  p95 {percentile(latencies, 95):5.2f} s"
        f"  p99 {percentile(latencies, 99):5.2f} s"
        f"  max {max(latencies):5.2f} s over {len(latencies)} messages ({total_chunks} chunks,"
        f" {total_chunks / span:5.1f} chunks/s indexed); {refused} refused, {chunkless} without chunks,"
        f" {missing} never searchable; poll median {statistics.median(polls or [0]) * 1000:.0f} ms",
        flush=True,
    )


async def main(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    texts = [
        t for t in corpus_messages(args.corpora) if any(i.bundle for i in convert_text(t, tz=ZoneInfo("UTC")))
    ][: args.messages]
    for i, rate in enumerate(args.rates):
        with tempfile.TemporaryDirectory() as tmp:
            async with running_stack(Settings(var_dir=Path(tmp))) as stack:
                if i == 0:
                    print(
                        f"{len(texts)} corpus messages per rate; embedded stack, {stack.embedder.identity},"
                        f" providers {stack.embedder.providers}; poll every {args.poll_ms} ms"
                    )
                await run_rate(stack, texts, rate, f"F{i}R", args.poll_ms / 1000)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[25.0, 100.0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--poll-ms", type=int, default=100)
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    asyncio.run(main(parser.parse_args()))
