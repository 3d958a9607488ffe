"""Decision support's per-patient state and the cards it showed, as changelog replicas.

Both are `kernel.changelog_store.ChangelogTable`s: the patient states of `cds.state.v1` (keyed by
patient, in the partition of the patient's input records) and the cards of `cds.cards.v1` (card
uuid → patient and rule, written when a CDS Hooks answer shows them, read when their feedback
comes back, possibly to another instance).

The stage applies a batch in two steps: `changes` gives the changelog records of the states it
changed, which go out with the batch's alerts (one transaction with the input offsets on Apache
Kafka); once the broker confirmed them, `save_many` keeps them here with their offsets. A crash
in between replays the batch against the state committed before it (`inference.cds.state.apply`
is idempotent and alert ids are deterministic), so nothing is lost or doubled.

Decoded states of recently used patients are kept in memory; the changelog reader drops a
patient's copy when another instance changed it (`forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from inference.cds.state import PatientState
from kernel.changelog_store import UNKNOWN_OFFSET, ChangelogTable, Entry
from kernel.kafka import Outgoing, Written, changelog_records, confirmed


class SqliteStateStore:
    """Patient states and shown cards in one SQLite file, the states most recently used in memory."""

    def __init__(self, path: Path | str, *, cache_size: int = 10_000) -> None:
        self._path = path
        self.states = ChangelogTable(path, "patient_state")
        self.cards = ChangelogTable(path, "shown_card")
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, PatientState] = OrderedDict()
        self._cache_size = cache_size
        self._shown: OrderedDict[str, None] = OrderedDict()  # card ids kept, most recent last

    def load(self, patient_id: str) -> PatientState | None:
        """The saved state of ``patient_id``, or None."""
        return self.load_many([patient_id]).get(patient_id)

    def cached(self, patient_id: str) -> PatientState | None:
        """The state of ``patient_id`` if it is among the recently used ones, else None (no I/O)."""
        with self._lock:
            state = self._cache.get(patient_id)
            if state is not None:
                self._cache.move_to_end(patient_id)
            return state

    def load_many(self, patient_ids: Sequence[str]) -> dict[str, PatientState]:
        """The saved states among ``patient_ids``: memory first, the rest from the replica."""
        found: dict[str, PatientState] = {}
        with self._lock:
            for patient_id in patient_ids:
                cached = self._cache.get(patient_id)
                if cached is not None:
                    self._cache.move_to_end(patient_id)
                    found[patient_id] = cached
        missing = [p for p in dict.fromkeys(patient_ids) if p not in found]
        for payload in self.states.get_many(missing).values() if missing else ():
            state = PatientState.model_validate_json(payload)
            self._remember(state)
            found[state.patient_id] = state
        return found

    @staticmethod
    def changes(states: Sequence[PatientState], partitions: Mapping[str, int]) -> list[Entry]:
        """The changelog records of ``states``, each in its patient's input partition."""
        return [
            Entry(s.patient_id, s.model_dump_json().encode(), partitions.get(s.patient_id, 0), UNKNOWN_OFFSET)
            for s in states
        ]

    def save_many(self, states: Sequence[PatientState], written: Sequence[Entry] | None = None) -> None:
        """Keep ``states`` (all or none): the changelog records ``written`` for them, confirmed by
        the broker with their offsets; without them, records made here (tests, tools)."""
        if not states:
            return
        entries = list(written) if written is not None else self.changes(states, {})
        self.states.apply(entries, own=True)
        for state in states:
            self._remember(state)

    def save(self, state: PatientState) -> None:
        """Keep one state (see `save_many`)."""
        self.save_many([state])

    def forget(self, patient_ids: Sequence[str]) -> None:
        """Drop the copies in memory of states changed elsewhere (the changelog reader calls it)."""
        with self._lock:
            for patient_id in patient_ids:
                self._cache.pop(patient_id, None)

    @staticmethod
    def card_changes(patient_id: str, cards: list[tuple[str, str]]) -> list[Entry]:
        """The changelog records of cards ``(card uuid, rule id)`` shown for ``patient_id``."""
        return [
            Entry(card, json.dumps([patient_id, rule]).encode(), 0, UNKNOWN_OFFSET) for card, rule in cards
        ]

    def remember_cards(
        self, patient_id: str, cards: list[tuple[str, str]], written: Sequence[Entry] | None = None
    ) -> None:
        """Note that cards ``(card uuid, rule id)`` were shown for ``patient_id`` (for feedback):
        the changelog records ``written`` for them, or records made here."""
        if not cards:
            return
        entries = list(written) if written is not None else self.card_changes(patient_id, cards)
        self.cards.apply(entries, own=True)
        with self._lock:
            for card, _ in cards:
                self._shown[card] = None
                self._shown.move_to_end(card)
            while len(self._shown) > self._cache_size:
                self._shown.popitem(last=False)

    def remembered(self, card_ids: list[str]) -> bool:
        """True when every card in ``card_ids`` was kept by this process recently (no I/O)."""
        with self._lock:
            return all(card in self._shown for card in card_ids)

    def card_owner(self, card_id: str) -> tuple[str, str] | None:
        """``(patient id, rule id)`` of a card shown before, or None."""
        payload = self.cards.get(card_id)
        if payload is None:
            return None
        patient_id, rule_id = json.loads(payload)
        return str(patient_id), str(rule_id)

    def patients(self) -> int:
        """How many patients have a saved state."""
        return self.states.count()

    def legacy_states(self) -> list[tuple[str, bytes]]:
        """(patient id, state) rows an earlier version kept in this file's ``patient_state`` table
        (before the changelog), for a one-time move into it; empty when there are none."""
        with contextlib.closing(sqlite3.connect(str(self._path))) as db:
            found = db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'patient_state'"
            ).fetchone()
            if found is None:
                return []
            return [
                (str(p), str(v).encode())
                for p, v in db.execute("SELECT patient_id, state FROM patient_state")
            ]

    def drop_legacy(self) -> None:
        """Remove the earlier version's table once its rows are in the changelog."""
        with contextlib.closing(sqlite3.connect(str(self._path))) as db:
            db.execute("DROP TABLE IF EXISTS patient_state")
            db.commit()

    def close(self) -> None:
        """Close the file."""
        self.states.close()
        self.cards.close()

    def _remember(self, state: PatientState) -> None:
        with self._lock:
            self._cache[state.patient_id] = state
            self._cache.move_to_end(state.patient_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


Publish = Callable[[list[Outgoing]], Awaitable[list[Written]]]
"""Sends records and returns where they were written once the broker confirmed them all."""


class SharedCards:
    """The cards CDS Hooks answers showed, shared by every instance: each one shown is written to
    `cds.cards.v1` before the answer goes out, so its feedback finds the patient and rule from
    whichever instance receives it."""

    def __init__(
        self,
        store: SqliteStateStore,
        *,
        topic: str = "",
        publish: Publish | None = None,
        caught_up: Callable[[float], Awaitable[float]] | None = None,
    ) -> None:
        self._store = store
        self._topic = topic
        self._publish = publish
        self._caught_up = caught_up

    async def remember(self, patient_id: str, cards: list[tuple[str, str]]) -> None:
        """Keep cards ``(card uuid, rule id)`` shown for ``patient_id`` (no I/O when known)."""
        if not cards or self._store.remembered([card for card, _ in cards]):
            return
        entries = self._store.card_changes(patient_id, cards)
        if self._publish is not None:
            entries = confirmed(entries, await self._publish(changelog_records(self._topic, entries)))
        await asyncio.to_thread(self._store.remember_cards, patient_id, cards, entries)

    async def owner(self, card_id: str, wait_s: float = 5.0) -> tuple[str, str] | None:
        """``(patient id, rule id)`` of a card shown by any instance, or None; a card not in this
        replica yet is looked up again once it has read the changelog to its end."""
        found = await asyncio.to_thread(self._store.card_owner, card_id)
        if found is None and self._caught_up is not None:
            with contextlib.suppress(TimeoutError):
                await self._caught_up(wait_s)
            found = await asyncio.to_thread(self._store.card_owner, card_id)
        return found
