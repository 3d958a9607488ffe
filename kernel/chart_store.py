"""Each patient's chart as a changelog replica: the current version of every resource seen on
`ehr.fhir.v1`, one changelog record each (key: patient and resource reference), so applying a
record touches only its resources.

The stages that read whole charts (note drafting, assistance) keep one each, in their own
compacted changelog topic (`kernel.changelog_kafka`): the instance that owns a patient's partition
writes the changes, with its outputs and input offsets (one transaction on Apache Kafka), and
every instance's replica follows the topic, so a chart is readable from any instance and moves
with its partition on a rebalance. A replay changes nothing (resources are keyed by reference).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from kernel.changelog_store import UNKNOWN_OFFSET, ChangelogTable, Entry
from kernel.chart import Chart, ref_of, retired

SEPARATOR = "\x1f"
"""Between the patient id and the resource reference in a changelog key."""


class ChartStore:
    """Charts in one SQLite file (thread-safe: stages read them from worker threads)."""

    def __init__(self, path: Path) -> None:
        self.table = ChangelogTable(path, "chart")

    def close(self) -> None:
        """Close the file."""
        self.table.close()

    def chart(self, patient_id: str) -> Chart:
        """The patient's current resources (an empty chart for a patient not seen)."""
        rows = self.table.with_prefix(patient_id + SEPARATOR)
        # An empty body is a deletion an earlier version stored as a value: not a resource.
        return Chart(patient_id, {key.split(SEPARATOR, 1)[1]: json.loads(body) for key, body in rows if body})

    def resources(self, patient_id: str, refs: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Those of the patient's resources ``refs`` (``Type/id``) that the chart holds: what a
        record's checks need, without decoding a chart that may hold thousands."""
        prefix = patient_id + SEPARATOR
        rows = self.table.get_many([prefix + ref for ref in refs])
        return {key[len(prefix) :]: json.loads(body) for key, body in rows.items() if body}

    @staticmethod
    def changes(patient_id: str, resources: Iterable[dict[str, Any]], partition: int = 0) -> list[Entry]:
        """The changelog records that merge ``resources`` into the chart: each resource's newest
        version, a deletion for one entered in error."""
        out: list[Entry] = []
        for res in resources:
            if not res.get("id") or not res.get("resourceType"):
                continue
            value = None if retired(res) else json.dumps(res, separators=(",", ":")).encode()
            out.append(Entry(patient_id + SEPARATOR + ref_of(res), value, partition, UNKNOWN_OFFSET))
        return out

    def save(self, entries: Sequence[Entry]) -> None:
        """Keep changes the broker confirmed (with their offsets), in one transaction."""
        self.table.apply(entries, own=True)

    def apply(self, patient_id: str, resources: Iterable[dict[str, Any]]) -> None:
        """Merge resources into the chart here only (tools and tests; a stage sends `changes`)."""
        self.save(self.changes(patient_id, resources))
