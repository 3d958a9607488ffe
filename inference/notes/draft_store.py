"""The notes stage's SQLite file: each patient's chart (one row per resource) and the drafts.

The chart is what drafts are built from: the current version of every resource of the patient
seen on `ehr.fhir.v1`, one row each, so applying a record touches only its resources. Drafts are
kept with their review state for the review API (and the dashboard). One process owns a file
(WAL mode), like the decision-support state store; writes are synchronous before the consumer
commits, so a restart replays at most the batch in flight, which changes nothing (resources are
keyed by reference, drafts by their deterministic id).
"""

from __future__ import annotations

from pathlib import Path

from kernel.chart_store import ChartStore
from kernel.events import DraftNote


class NotesStore(ChartStore):
    """Charts (`kernel.chart_store.ChartStore`) and drafts in one SQLite file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS drafts (id TEXT PRIMARY KEY, patient TEXT, status TEXT,"
                " created TEXT, body TEXT)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS drafts_patient ON drafts (patient, created)")

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
