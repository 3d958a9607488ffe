"""Changelog-backed state: the per-patient state of a stateful stage, kept in a compacted topic.

The model of Kafka Streams' state stores. Every change a stage makes to a key is written to a
compacted changelog topic, in the partition of the input record that caused it (the changelog is
co-partitioned with the input). Each instance keeps a local SQLite replica of the changelog
(`ChangelogTable`), fed by a `ChangelogTailer` that reads every partition (read_committed on a
transactional broker, so an aborted batch's state never shows). So:

- a partition's state moves with the partition: when the consumer group assigns it, the new owner
  first brings its replica up to the changelog's end for that partition (`RestoreOnAssign`) and
  only then processes records; a rebalance or a crash loses nothing that was committed;
- requests (CDS Hooks, drafts, card feedback) are answered by whichever instance gets them, from
  its replica: fresh to within the tailer's lag, and `ChangelogTailer.caught_up` waits for the
  end when a request must see a write made elsewhere;
- the replica is a cache: its file keeps the position reached per partition, so a restart reads
  only the changelog's tail; a replica ahead of the topic (the topic was recreated, e.g. on the
  in-memory Tansu broker) is dropped and read again.

Writes: the owner sends changes with its outputs (`kernel.kafka.StatefulOutput`), in one
transaction with the input offsets where the broker has transactions, and applies them to its
replica once the broker confirmed them, with their offsets; a change read back by the tailer is
applied only when newer than what the replica holds (per key, by offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Histogram

log = logging.getLogger(__name__)

RESTORE_SECONDS = Histogram(
    "clinstream_state_restore_seconds",
    "Time from a partition assignment to its state being restored from the changelog",
    ["topic"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)


@dataclass(frozen=True)
class Entry:
    """One changelog record as the replica keeps it."""

    key: str
    value: bytes | None
    """None: the key was deleted (a tombstone)."""
    partition: int
    offset: int


def _statements(name: str) -> dict[str, str]:
    """The SQL of a table named ``name`` (an identifier, checked by the caller); ``{marks}`` is
    filled with placeholders."""
    entry, position = f"{name}_entry", f"{name}_position"
    return {
        "get": f"SELECT key, value FROM {entry} WHERE key IN ({{marks}})",  # noqa: S608 - placeholders
        "all": f"SELECT key, value FROM {entry}",  # noqa: S608 - our table name
        "in_parts": f"SELECT key, value FROM {entry} WHERE part IN ({{marks}})",  # noqa: S608
        "offset": f"SELECT off FROM {entry} WHERE key = ?",  # noqa: S608
        "delete": f"DELETE FROM {entry} WHERE key = ?",  # noqa: S608
        "upsert": f"INSERT INTO {entry} (key, part, off, value) VALUES (?, ?, ?, ?) "  # noqa: S608
        "ON CONFLICT(key) DO UPDATE SET part = excluded.part, off = excluded.off, value = excluded.value",
        "advance": f"INSERT INTO {position} (part, next) VALUES (?, ?) "  # noqa: S608
        "ON CONFLICT(part) DO UPDATE SET next = max(next, excluded.next)",
        "positions": f"SELECT part, next FROM {position}",  # noqa: S608
        "keys_in_parts": f"SELECT key FROM {entry} WHERE part IN ({{marks}})",  # noqa: S608
        "drop_parts": f"DELETE FROM {entry} WHERE part IN ({{marks}})",  # noqa: S608
        "drop_positions": f"DELETE FROM {position} WHERE part IN ({{marks}})",  # noqa: S608
        "count": f"SELECT count(*) FROM {entry}",  # noqa: S608
    }


class ChangelogTable:
    """The local replica of one changelog topic: key → latest value, and the position reached in
    each partition. Thread-safe (one connection behind a lock); WAL, synchronous=NORMAL. Several
    tables may share a file under different ``name``s."""

    def __init__(self, path: Path | str, name: str = "changelog") -> None:
        if not name.isidentifier():
            raise ValueError(f"table name {name!r} is not an identifier")
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_entry (key TEXT PRIMARY KEY, part INTEGER NOT NULL, "
            "off INTEGER NOT NULL, value BLOB NOT NULL)"
        )
        self._db.execute(f"CREATE INDEX IF NOT EXISTS {name}_entry_part ON {name}_entry (part)")
        self._db.execute(
            f"CREATE TABLE IF NOT EXISTS {name}_position (part INTEGER PRIMARY KEY, next INTEGER NOT NULL)"
        )
        self._sql = _statements(name)
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        """The latest value of ``key``, or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The latest values of those of ``keys`` that have one."""
        wanted = sorted(set(keys))
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(wanted), 500):  # under SQLite's limit on bound parameters
                part = wanted[start : start + 500]
                marks = ",".join("?" * len(part))
                query = self._sql["get"].format(marks=marks)
                found.update((str(k), bytes(v)) for k, v in self._db.execute(query, part))
        return found

    def scan(self, partitions: Iterable[int] | None = None) -> list[tuple[str, bytes]]:
        """Every (key, value), or those of ``partitions``."""
        with self._lock:
            if partitions is None:
                rows = self._db.execute(self._sql["all"]).fetchall()
            else:
                parts = sorted(set(partitions))
                marks = ",".join("?" * len(parts))
                query = self._sql["in_parts"].format(marks=marks)
                rows = self._db.execute(query, parts).fetchall()
        return [(str(k), bytes(v)) for k, v in rows]

    def apply(
        self, entries: Sequence[Entry], positions: dict[int, int] | None = None, *, own: bool = False
    ) -> list[str]:
        """Apply ``entries`` and raise the positions reached; one transaction. Each entry read
        back from the topic applies only when newer (by offset) than what its key holds; ``own``
        entries (the owner's writes, just confirmed) always apply. Returns the keys changed."""
        changed: list[str] = []
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for e in entries:
                    row = self._db.execute(self._sql["offset"], (e.key,)).fetchone()
                    if not own and row is not None and int(row[0]) >= e.offset:
                        continue
                    if e.value is None:
                        self._db.execute(self._sql["delete"], (e.key,))
                    else:
                        self._db.execute(self._sql["upsert"], (e.key, e.partition, e.offset, e.value))
                    changed.append(e.key)
                for part, nxt in (positions or {}).items():
                    self._db.execute(self._sql["advance"], (part, nxt))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return changed

    def positions(self) -> dict[int, int]:
        """The next offset to read, per partition read so far."""
        with self._lock:
            return {int(p): int(n) for p, n in self._db.execute(self._sql["positions"])}

    def reset(self, partitions: Iterable[int]) -> list[str]:
        """Forget ``partitions`` (their entries and position); returns the keys dropped."""
        parts = sorted(set(partitions))
        if not parts:
            return []
        marks = ",".join("?" * len(parts))
        with self._lock:
            keys = [
                str(k) for (k,) in self._db.execute(self._sql["keys_in_parts"].format(marks=marks), parts)
            ]
            self._db.execute("BEGIN")
            self._db.execute(self._sql["drop_parts"].format(marks=marks), parts)
            self._db.execute(self._sql["drop_positions"].format(marks=marks), parts)
            self._db.execute("COMMIT")
        return keys

    def count(self) -> int:
        """How many keys have a value."""
        with self._lock:
            (n,) = self._db.execute(self._sql["count"]).fetchone()
        return int(n)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()


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
    ) -> None:
        self.topic = topic
        self.table = table
        self._bootstrap = bootstrap
        self._on_change = on_change
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            client_id=client_id,
            fetch_max_wait_ms=100,
        )
        self._parts: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Condition()
        self._failed: BaseException | None = None

    @property
    def partitions(self) -> int:
        """How many partitions the changelog has."""
        return len(self._parts)

    async def start(self) -> None:
        """Assign every partition, drop what the topic no longer has, and start reading."""
        parts = await _partitions(self._bootstrap, self.topic)
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
        for tp in self._parts:
            if tp.partition in held:
                self._consumer.seek(tp, held[tp.partition])
            else:
                await self._consumer.seek_to_beginning(tp)
        self._task = asyncio.create_task(self._run(), name=f"changelog-{self.topic}")

    async def _run(self) -> None:
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=5000)
                entries = [
                    Entry(r.key.decode(), r.value, r.partition, r.offset)
                    for records in batches.values()
                    for r in records
                    if r.key is not None
                ]
                positions = {tp.partition: await self._consumer.position(tp) for tp in self._parts}
                changed = await asyncio.to_thread(self.table.apply, entries, positions)
                if changed and self._on_change is not None:
                    self._on_change(changed)
                async with self._advanced:
                    self._advanced.notify_all()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # kept for the waiters, then re-raised
            self._failed = exc
            async with self._advanced:
                self._advanced.notify_all()
            raise

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
            if self._failed is not None:
                raise RuntimeError(f"changelog {self.topic} reader failed") from self._failed
            held = self.table.positions()
            return all(held.get(tp.partition, 0) >= end for tp, end in ends.items())

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


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (waiting a little for one just created)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
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

    def __init__(
        self,
        tailers: Sequence[ChangelogTailer],
        *,
        on_assigned: Callable[[set[int]], None] | None = None,
    ) -> None:
        self._tailers = tailers
        self._on_assigned = on_assigned

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
        if self._on_assigned is not None:
            self._on_assigned(partitions)
