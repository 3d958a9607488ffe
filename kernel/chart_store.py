"""Each patient's chart in a SQLite file: the current version of every resource seen on
`ehr.fhir.v1`, one row each, so applying a record touches only its resources.

The stages that read whole charts (note drafting, assistance) keep one each. One process owns a
file (WAL mode); writes are synchronous before the consumer commits, so a restart replays at most
the batch in flight, which changes nothing (resources are keyed by reference).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kernel.chart import Chart, ref_of, retired


class ChartStore:
    """Charts in one SQLite file (thread-safe: stages read them from worker threads)."""

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
