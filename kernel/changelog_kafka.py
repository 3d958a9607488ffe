"""Changelog-backed state: the per-patient state of a stateful stage, kept in a compacted topic.

The model of Kafka Streams' state stores. Every change a stage makes to a key is written to a
compacted changelog topic, in the partition of the input record that caused it (the changelog is
co-partitioned with the input). Each instance keeps a local SQLite replica of the changelog
(`kernel.changelog_store.ChangelogTable`), fed by a `ChangelogTailer` that reads every partition
(read_committed on a transactional broker, so an aborted batch's state never shows). So:

- a partition's state moves with the partition: when the consumer group assigns it, the new owner
  first brings its replica up to the changelog's end for that partition (`RestoreOnAssign`) and
  only then processes records; a rebalance or a crash loses nothing that was committed;
- requests (CDS Hooks, drafts, card feedback) are answered by whichever instance gets them, from
  its replica: fresh to within the tailer's lag, and `ChangelogTailer.caught_up` waits for the
  end when a request must see a write made elsewhere;
- the replica is a cache: its file keeps the position reached per partition, so a restart reads
  only the changelog's tail; a replica ahead of the topic (the topic was recreated, e.g. on the
  in-memory Tansu broker) is dropped and read again.

Writes: the owner sends changes with its outputs (`kernel.kafka.BatchCommitter`), in one
transaction with the input offsets where the broker has transactions, and applies them to its
replica once the broker confirmed them, with their offsets; a change read back by the tailer is
applied only when newer than what the replica holds (per key, by offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Histogram

from kernel.changelog_store import ChangelogTable, Entry

log = logging.getLogger(__name__)

RESTORE_SECONDS = Histogram(
    "clinstream_state_restore_seconds",
    "Time from a partition assignment to its state being restored from the changelog",
    ["topic"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


Listener = Callable[[list[str]], None]
"""Told the keys whose value the tailer changed (e.g. to drop decoded copies held in memory)."""


class ChangelogTailer:
    """Keeps a `ChangelogTable` current: reads every partition of the changelog topic, without a
    consumer group, from the positions the table reached."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        table: ChangelogTable,
        *,
        read_committed: bool,
        on_change: Listener | None = None,
        client_id: str = "clinstream-changelog",
        key_of: Callable[[Any], str | None] | None = None,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self._key_of = key_of or _record_key
        self.table = table
        self._bootstrap = bootstrap
        self._security = dict(security or {})
        self._on_change = on_change
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            **self._security,
            enable_auto_commit=False,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            client_id=client_id,
            fetch_max_wait_ms=100,
        )
        self._parts: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Condition()
        self._held: dict[int, int] = {}
        """The positions the table holds (only this reader moves them once it started)."""

    async def start(self) -> None:
        """Assign every partition, drop what the topic no longer has, and start reading."""
        parts = await partitions_of(self._bootstrap, self.topic, self._security)
        await self._consumer.start()
        self._parts = [TopicPartition(self.topic, p) for p in sorted(parts)]
        self._consumer.assign(self._parts)
        ends = await self._consumer.end_offsets(self._parts)
        starts = await self._consumer.beginning_offsets(self._parts)
        held = await asyncio.to_thread(self.table.positions)
        stale = [tp.partition for tp in self._parts if held.get(tp.partition, 0) > ends[tp]]
        stale += [tp.partition for tp in self._parts if 0 < held.get(tp.partition, 0) < starts[tp]]
        if stale:
            log.warning("changelog %s: local replica ahead of the topic in partitions %s: read again",
                        self.topic, sorted(set(stale)))  # fmt: skip
            dropped = await asyncio.to_thread(self.table.reset, stale)
            if self._on_change is not None:
                self._on_change(dropped)
            held = await asyncio.to_thread(self.table.positions)
        self._held = held
        for tp in self._parts:
            if tp.partition in held:
                self._consumer.seek(tp, held[tp.partition])
            else:
                await self._consumer.seek_to_beginning(tp)
        self._task = asyncio.create_task(self._run(), name=f"changelog-{self.topic}")

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The broker or the local file, for a moment: read again from where the table is
                # (a restore waiting on this replica waits longer, it never goes on without it).
                log.exception("changelog %s: reading failed; retrying", self.topic)
                await asyncio.sleep(1.0)
                for tp in self._parts:
                    if tp.partition in self._held:
                        self._consumer.seek(tp, self._held[tp.partition])

    async def _step(self) -> None:
        batches = await self._consumer.getmany(timeout_ms=500, max_records=5000)
        entries = [
            Entry(key, r.value, r.partition, r.offset)
            for records in batches.values()
            for r in records
            if (key := self._key_of(r)) is not None
        ]
        positions = {tp.partition: await self._consumer.position(tp) for tp in self._parts}
        if not entries and positions == self._held:
            return  # an idle poll: nothing to write, no waiter to wake
        changed = await asyncio.to_thread(self.table.apply, entries, positions)
        self._held = positions
        if changed and self._on_change is not None:
            self._on_change(changed)
        async with self._advanced:
            self._advanced.notify_all()

    async def caught_up(
        self, partitions: Iterable[int] | None = None, timeout_s: float | None = None
    ) -> float:
        """Wait until the replica holds everything committed to ``partitions`` (all when None) up to
        now; returns the seconds waited. Raises TimeoutError after ``timeout_s``."""
        started = time.monotonic()
        wanted = set(partitions) if partitions is not None else {tp.partition for tp in self._parts}
        tps = [tp for tp in self._parts if tp.partition in wanted]
        if not tps:
            return 0.0
        ends = await self._consumer.end_offsets(tps)  # read_committed: the last stable offsets

        def done() -> bool:
            return all(self._held.get(tp.partition, 0) >= end for tp, end in ends.items())

        async with asyncio.timeout(timeout_s):
            async with self._advanced:
                await self._advanced.wait_for(done)
        return time.monotonic() - started

    async def stop(self) -> None:
        """Stop reading (the table stays as it is)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()


def _record_key(record: Any) -> str | None:
    key = record.key
    return key.decode() if isinstance(key, bytes) else None


async def partitions_of(bootstrap: str, topic: str, security: Mapping[str, Any] | None = None) -> list[int]:
    """The partition numbers of ``topic`` (waiting a little for one just created); ``security``:
    `kernel.settings.kafka_security`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000, **(security or {}))
    await admin.start()
    try:
        for _ in range(50):
            with contextlib.suppress(KafkaError):
                [described] = await admin.describe_topics([topic])
                found = sorted(int(p["partition"]) for p in described.get("partitions") or ())
                if found:
                    return found
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise RuntimeError(f"changelog topic {topic} not found")


class RestoreOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    """A stage consumer's rebalance listener: before the consumer fetches from newly assigned
    partitions, each changelog is brought up to its end in those partitions (the state the
    previous owner committed), so no record is processed against older state."""

    def __init__(self, tailers: Sequence[ChangelogTailer]) -> None:
        self._tailers = tailers

    async def on_partitions_revoked(self, revoked: Any) -> None:
        """Nothing to flush: every batch's state was written before its offsets were committed."""

    async def on_partitions_assigned(self, assigned: Any) -> None:
        """Restore the assigned partitions' state before processing resumes."""
        partitions = {tp.partition for tp in assigned}
        if not partitions:
            return
        for tailer in self._tailers:
            waited = await tailer.caught_up(partitions)
            RESTORE_SECONDS.labels(tailer.topic).observe(waited)
            log.info(
                "state restored: changelog %s partitions %s in %.3f s (%d keys held)",
                tailer.topic, sorted(partitions), waited, tailer.table.count(),
            )  # fmt: skip
