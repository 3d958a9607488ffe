"""De-identification and export speed on the Synthea patients of the corpora (pure path, no broker).

Prints resources de-identified per second and the time to build each dataset kind, medians of
three runs. Usage: python bench/dataset_export.py
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from exports.datasets import Sources, build
from exports.deid import Deidentifier
from stream.events import Envelope, FhirInbound, FhirRecord
from stream.fhir_input import normalize_fhir

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "fhir" / "smart-synthea-r4"


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
        bundle = json.loads(path.read_text(encoding="utf-8-sig"))
        entries = [e for e in bundle["entry"] if "resource" in e]
        inbound = FhirInbound(
            interaction="transaction",
            resources=[e["resource"] for e in entries],
            full_urls=[e.get("fullUrl") for e in entries],
        )
        out += [
            FhirRecord(envelope=envelope, patient_id=g.patient_id, resources=g.resources)
            for g in normalize_fhir(inbound)
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
