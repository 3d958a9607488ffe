"""De-identification and export speed on the Synthea patients of the corpora (pure path, no broker).

Prints the time to build the pretraining dataset (de-identify, render, sort) and the resources
per second, median of three runs. Usage: python bench/dataset_export.py
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.synthea_feed import synthea_inbound  # noqa: E402
from exports.datasets import Sources, build  # noqa: E402
from exports.deid import Deidentifier  # noqa: E402
from kernel.events import Envelope, FhirRecord  # noqa: E402
from stream.fhir_input import normalize_fhir  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpora" / "fhir" / "smart-synthea-r4"


def records() -> list[FhirRecord]:
    envelope = Envelope(
        source_system="synthea",
        source_message_id="1",
        content_hash="0",
        received_at=datetime.now(UTC),
        trace_id="t",
    )
    out = []
    for path in sorted(CORPUS.glob("*.json")):
        if "Information" in path.name:
            continue
        out += [
            FhirRecord(envelope=envelope, patient_id=g.patient_id, resources=g.resources)
            for g in normalize_fhir(synthea_inbound(path))
        ]
    return out


def main() -> None:
    found = records()
    resources = sum(len(r.resources) for r in found)
    deid = Deidentifier(b"bench-key-of-enough-length-000")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        rows = build("pretraining", Sources(found), deid)
        times.append(time.perf_counter() - started)
    median = statistics.median(times)
    print(f"patients {len(rows)}, resources {resources}")
    print(
        f"pretraining export (de-identify + render + sort): median {median:.2f} s"
        f" = {resources / median:,.0f} resources/s"
    )


if __name__ == "__main__":
    main()
