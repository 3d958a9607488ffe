"""The notes stage's state: each patient's chart (`kernel.chart_store.ChartStore`) and the drafts.

The chart is what drafts are built from; it lives in the changelog `notes.charts.v1`. The drafts
live on `notes.drafts.v1` itself: every version of a draft (written, then reviewed) is published
there, keyed by patient, so each instance keeps a replica of the drafts by reading that topic
(newest version per draft id), and the review API answers from whichever instance gets the call.
A draft already kept (same deterministic id) is not written again: a replay changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from kernel.changelog_store import UNKNOWN_OFFSET, ChangelogTable, Entry
from kernel.chart_store import ChartStore
from kernel.events import DraftNote
from kernel.kafka import Written


class DraftTable(ChangelogTable):
    """Drafts by id, newest version each, with an index by status and creation time."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "draft")
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS draft_index (id TEXT PRIMARY KEY, status TEXT, created TEXT)"
            )
            self._db.execute(
                "CREATE INDEX IF NOT EXISTS draft_index_created ON draft_index (status, created)"
            )

    def _indexed(self, db: sqlite3.Connection, key: str, value: bytes | None) -> None:
        if value is None:
            db.execute("DELETE FROM draft_index WHERE id = ?", (key,))
            return
        body = json.loads(value)
        db.execute(
            "INSERT OR REPLACE INTO draft_index VALUES (?, ?, ?)",
            (key, body.get("status"), body.get("created")),
        )

    def newest(self, status: str | None, limit: int) -> list[str]:
        """Ids of the newest drafts (with ``status``)."""
        with self._lock:
            if status:
                rows = self._db.execute(
                    "SELECT id FROM draft_index WHERE status = ? ORDER BY created DESC, id LIMIT ?",
                    (status, limit),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id FROM draft_index ORDER BY created DESC, id LIMIT ?", (limit,)
                ).fetchall()
        return [str(r[0]) for r in rows]


def draft_key(record: Any) -> str | None:
    """The draft id of a `notes.drafts.v1` record (its key is the patient)."""
    try:
        found = json.loads(record.value or b"{}").get("id")
    except ValueError:
        return None
    return found if isinstance(found, str) else None


class NotesStore(ChartStore):
    """Charts and drafts in one SQLite file."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.drafts_table = DraftTable(path)

    def close(self) -> None:
        """Close the file."""
        super().close()
        self.drafts_table.close()

    def save_draft(self, note: DraftNote, written: Written = None) -> None:
        """Keep a draft (or its reviewed version: same id), written to the drafts topic where
        ``written`` says (None: not known)."""
        partition, offset = written if written is not None else (0, UNKNOWN_OFFSET)
        self.drafts_table.apply(
            [Entry(note.id, note.model_dump_json().encode(), partition, offset)], own=True
        )

    def draft(self, draft_id: str) -> DraftNote | None:
        """A draft by id, or None."""
        body = self.drafts_table.get(draft_id)
        return DraftNote.model_validate_json(body) if body is not None else None

    def drafts(self, *, status: str | None = None, limit: int = 100) -> list[DraftNote]:
        """The newest drafts, optionally only those with ``status`` (e.g. preliminary: under review)."""
        ids = self.drafts_table.newest(status, limit)
        found = self.drafts_table.get_many(ids)
        return [DraftNote.model_validate_json(found[i]) for i in ids if i in found]
