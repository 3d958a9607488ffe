"""The notes stage's SQLite file: each patient's chart (one row per resource) and the drafts.

The chart is what drafts are built from: the current version of every resource of the patient
seen on `ehr.fhir.v1`, one row each, so applying a record touches only its resources. Drafts are
kept with their review state for the review API (and the dashboard). One process owns a file
(WAL mode), like the decision-support state store; writes are synchronous before the consumer
commits, so a restart replays at most the batch in flight, which changes nothing (resources are
keyed by reference, drafts by their deterministic id).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kernel.chart import Chart, ref_of, retired
from kernel.events import DraftNote


class NotesStore:
    """Charts and drafts in one SQLite file (thread-safe: the stage drafts in a worker thread)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS resources (patient TEXT, ref TEXT, body TEXT,"
                " PRIMARY KEY (patient, ref))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS drafts (id TEXT PRIMARY KEY, patient TEXT, status TEXT,"
                " created TEXT, body TEXT)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS drafts_patient ON drafts (patient, created)")

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()

    def chart(self, patient_id: str) -> Chart:
        """The patient's current resources (an empty chart for a patient not seen)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT ref, body FROM resources WHERE patient = ?", (patient_id,)
            ).fetchall()
        return Chart(patient_id, {ref: json.loads(body) for ref, body in rows})

    def apply(self, patient_id: str, resources: Iterable[dict[str, Any]]) -> None:
        """Merge resources into the chart (newest version wins; entered-in-error removes), in one
        transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for res in resources:
                    if not res.get("id") or not res.get("resourceType"):
                        continue
                    ref = ref_of(res)
                    if retired(res):
                        self._db.execute(
                            "DELETE FROM resources WHERE patient = ? AND ref = ?", (patient_id, ref)
                        )
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO resources VALUES (?, ?, ?)",
                            (patient_id, ref, json.dumps(res, separators=(",", ":"))),
                        )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def save_draft(self, note: DraftNote) -> None:
        """Keep a draft (or its reviewed version: same id)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO drafts VALUES (?, ?, ?, ?, ?)",
                (note.id, note.patient_id, note.status, note.created.isoformat(), note.model_dump_json()),
            )

    def draft(self, draft_id: str) -> DraftNote | None:
        """A draft by id, or None."""
        with self._lock:
            row = self._db.execute("SELECT body FROM drafts WHERE id = ?", (draft_id,)).fetchone()
        return DraftNote.model_validate_json(row[0]) if row else None

    def drafts(self, *, status: str | None = None, limit: int = 100) -> list[DraftNote]:
        """The newest drafts, optionally only those with ``status`` (e.g. preliminary: under review)."""
        with self._lock:
            if status:
                rows = self._db.execute(
                    "SELECT body FROM drafts WHERE status = ? ORDER BY created DESC LIMIT ?", (status, limit)
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT body FROM drafts ORDER BY created DESC LIMIT ?", (limit,)
                ).fetchall()
        return [DraftNote.model_validate_json(r[0]) for r in rows]
