"""Per-patient state kept in SQLite: the snapshot a restart resumes from.

The decision-support stage loads a patient's state, applies a record, publishes its alerts,
saves the state, and only then commits the offset. A restart therefore resumes from the
committed offset with the state saved for everything before it; a record processed again after
a crash between save and commit is applied again and changes nothing (`inference.cds.state.apply`
is idempotent and alert ids are deterministic).

One process owns a file (WAL mode; writes are small and synchronous=NORMAL, which survives a
process crash). A deployment that runs several decision-support processes gives each its own
file only if each always gets the same partitions; otherwise see docs/decision-support.md.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from inference.cds.state import PatientState


class StateStore(Protocol):
    """Where patient state lives between records."""

    def load(self, patient_id: str) -> PatientState | None:
        """The saved state of ``patient_id``, or None for a patient not seen before."""
        ...

    def save(self, state: PatientState) -> None:
        """Keep ``state`` (durably, before the caller commits its offset)."""
        ...

    def load_many(self, patient_ids: Sequence[str]) -> dict[str, PatientState]:
        """The saved states of those of ``patient_ids`` seen before."""
        ...

    def save_many(self, states: Sequence[PatientState]) -> None:
        """Keep all of ``states`` or none of them (one transaction)."""
        ...

    def cached(self, patient_id: str) -> PatientState | None:
        """The state of ``patient_id`` if it is in memory (no I/O; None: ask `load`)."""
        ...

    def remember_cards(self, patient_id: str, cards: list[tuple[str, str]]) -> None:
        """Note that cards ``(card uuid, rule id)`` were shown for ``patient_id`` (for feedback)."""
        ...

    def remembered(self, card_ids: list[str]) -> bool:
        """True when every card in ``card_ids`` is known to be remembered (no I/O)."""
        ...

    def card_owner(self, card_id: str) -> tuple[str, str] | None:
        """``(patient id, rule id)`` of a card shown before, or None."""
        ...


class SqliteStateStore:
    """`StateStore` in one SQLite file, with the most recently used states kept in memory."""

    def __init__(self, path: Path | str, *, cache_size: int = 10_000) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS patient_state (patient_id TEXT PRIMARY KEY, state TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS shown_card (card_id TEXT PRIMARY KEY, patient_id TEXT NOT NULL, "
            "rule_id TEXT NOT NULL)"
        )
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, PatientState] = OrderedDict()
        self._cache_size = cache_size
        self._shown: OrderedDict[str, None] = OrderedDict()  # card ids written, most recent last

    def load(self, patient_id: str) -> PatientState | None:
        """The saved state of ``patient_id``, or None."""
        return self.load_many([patient_id]).get(patient_id)

    def cached(self, patient_id: str) -> PatientState | None:
        """The state of ``patient_id`` if it is among the recently used ones, else None."""
        with self._lock:
            state = self._cache.get(patient_id)
            if state is not None:
                self._cache.move_to_end(patient_id)
            return state

    def save(self, state: PatientState) -> None:
        """Write ``state``; returns once SQLite has it."""
        self.save_many([state])

    def load_many(self, patient_ids: Sequence[str]) -> dict[str, PatientState]:
        """The saved states among ``patient_ids``: memory first, the rest in one query each 500."""
        found: dict[str, PatientState] = {}
        with self._lock:
            for patient_id in patient_ids:
                cached = self._cache.get(patient_id)
                if cached is not None:
                    self._cache.move_to_end(patient_id)
                    found[patient_id] = cached
            missing = sorted({p for p in patient_ids if p not in found})
            rows: list[tuple[str]] = []
            for start in range(0, len(missing), 500):  # under SQLite's limit on bound parameters
                part = missing[start : start + 500]
                marks = ",".join("?" * len(part))
                query = f"SELECT state FROM patient_state WHERE patient_id IN ({marks})"  # noqa: S608 - placeholders
                rows += self._db.execute(query, part).fetchall()
        for (payload,) in rows:
            state = PatientState.model_validate_json(payload)
            self._remember(state)
            found[state.patient_id] = state
        return found

    def save_many(self, states: Sequence[PatientState]) -> None:
        """Write all of ``states`` in one transaction; returns once SQLite has them."""
        if not states:
            return
        rows = [(state.patient_id, state.model_dump_json()) for state in states]
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany(
                    "INSERT INTO patient_state (patient_id, state) VALUES (?, ?) "
                    "ON CONFLICT(patient_id) DO UPDATE SET state = excluded.state",
                    rows,
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        for state in states:
            self._remember(state)

    def remember_cards(self, patient_id: str, cards: list[tuple[str, str]]) -> None:
        """Note that cards ``(card uuid, rule id)`` were shown for ``patient_id``."""
        if not cards:
            return
        with self._lock:
            self._db.executemany(
                "INSERT OR IGNORE INTO shown_card (card_id, patient_id, rule_id) VALUES (?, ?, ?)",
                [(card, patient_id, rule) for card, rule in cards],
            )
            for card, _ in cards:
                self._shown[card] = None
                self._shown.move_to_end(card)
            while len(self._shown) > self._cache_size:
                self._shown.popitem(last=False)

    def remembered(self, card_ids: list[str]) -> bool:
        """True when every card in ``card_ids`` was written by this process recently."""
        with self._lock:
            return all(card in self._shown for card in card_ids)

    def card_owner(self, card_id: str) -> tuple[str, str] | None:
        """``(patient id, rule id)`` of a card shown before, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT patient_id, rule_id FROM shown_card WHERE card_id = ?", (card_id,)
            ).fetchone()
        return (str(row[0]), str(row[1])) if row else None

    def patients(self) -> int:
        """How many patients have a saved state."""
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM patient_state").fetchone()
        return int(count)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def _remember(self, state: PatientState) -> None:
        with self._lock:
            self._cache[state.patient_id] = state
            self._cache.move_to_end(state.patient_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
