"""The local replica of a changelog topic in SQLite (`kernel.changelog_kafka` keeps it current).

Keys map to their latest value with the partition and offset it came from, plus the position
reached in each partition, so a restart resumes reading where it was and a record read twice
(or older than what the key holds) changes nothing.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

UNKNOWN_OFFSET = -1
"""The offset of a change the broker did not report (FastStream's in-memory test broker), or of
one not sent yet."""


@dataclass(frozen=True)
class Entry:
    """One changelog record as the replica keeps it."""

    key: str
    value: bytes | None
    """None or empty: the key was deleted (a tombstone; read back from the topic, a deletion is
    an empty value, as FastStream publishes no null value)."""
    partition: int
    offset: int


def _statements(name: str) -> dict[str, str]:
    """The SQL of a table named ``name`` (an identifier, checked by the caller); ``{marks}`` is
    filled with placeholders."""
    entry, position = f"{name}_entry", f"{name}_position"
    return {
        "get": f"SELECT key, value FROM {entry} WHERE key IN ({{marks}})",  # noqa: S608 - placeholders
        "all": f"SELECT key, value FROM {entry}",  # noqa: S608 - our table name
        "delete": f"DELETE FROM {entry} WHERE key = ?",  # noqa: S608
        "delete_older": f"DELETE FROM {entry} WHERE key = ? AND off < ?",  # noqa: S608
        "upsert": f"INSERT INTO {entry} (key, part, off, value) VALUES (?, ?, ?, ?) "  # noqa: S608
        "ON CONFLICT(key) DO UPDATE SET part = excluded.part, off = excluded.off, value = excluded.value",
        "upsert_newer": f"INSERT INTO {entry} (key, part, off, value) VALUES (?, ?, ?, ?) "  # noqa: S608
        "ON CONFLICT(key) DO UPDATE SET part = excluded.part, off = excluded.off, value = excluded.value "
        f"WHERE excluded.off > {entry}.off",
        "advance": f"INSERT INTO {position} (part, next) VALUES (?, ?) "  # noqa: S608
        "ON CONFLICT(part) DO UPDATE SET next = max(next, excluded.next)",
        "positions": f"SELECT part, next FROM {position}",  # noqa: S608
        "keys_in_parts": f"SELECT key FROM {entry} WHERE part IN ({{marks}})",  # noqa: S608
        "drop_parts": f"DELETE FROM {entry} WHERE part IN ({{marks}})",  # noqa: S608
        "drop_positions": f"DELETE FROM {position} WHERE part IN ({{marks}})",  # noqa: S608
        "count": f"SELECT count(*) FROM {entry}",  # noqa: S608
        "range": f"SELECT key, value FROM {entry} WHERE key >= ? AND key < ?",  # noqa: S608
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
        # Several tables may share a file, each with its connection: a writer waits for another.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
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

    def with_prefix(self, prefix: str) -> list[tuple[str, bytes]]:
        """Every (key, value) whose key starts with ``prefix`` (keys of one group, e.g. a
        patient's resources under ``patient + SEPARATOR``)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
        with self._lock:
            if end is None:
                rows = self._db.execute(self._sql["all"]).fetchall()
            else:
                rows = self._db.execute(self._sql["range"], (prefix, end)).fetchall()
        return [(str(k), bytes(v)) for k, v in rows]

    def apply(
        self, entries: Sequence[Entry], positions: dict[int, int] | None = None, *, own: bool = False
    ) -> list[str]:
        """Apply ``entries`` and raise the positions reached; one transaction. Each entry read
        back from the topic applies only when newer (by offset) than what its key holds; ``own``
        entries (the owner's writes, just confirmed) always apply. Returns the keys changed."""
        changed: list[str] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")  # the write lock now: waits for another writer
            try:
                for e in entries:
                    if not e.value and own:
                        done = self._db.execute(self._sql["delete"], (e.key,))
                    elif not e.value:
                        done = self._db.execute(self._sql["delete_older"], (e.key, e.offset))
                    else:
                        row = (e.key, e.partition, e.offset, e.value)
                        done = self._db.execute(self._sql["upsert" if own else "upsert_newer"], row)
                    if done.rowcount:  # 0: what the key holds is as new or newer
                        self._indexed(self._db, e.key, e.value or None)
                        changed.append(e.key)
                for part, nxt in (positions or {}).items():
                    self._db.execute(self._sql["advance"], (part, nxt))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return changed

    def _indexed(self, db: sqlite3.Connection, key: str, value: bytes | None) -> None:
        """Keep a subclass's own index of ``key`` in step (inside the same transaction; None:
        deleted). Nothing by default."""

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
            self._db.execute("BEGIN IMMEDIATE")  # the write lock now: waits for another writer
            for key in keys:
                self._indexed(self._db, key, None)
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
