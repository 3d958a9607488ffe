"""The local code mapping assistant on the corpus' local codes: how many suggestions are right.

Every HL7 v2 message of `../shared/corpora/hl7v2` and every FHIR file of `../shared/corpora/fhir`
goes through its normalizer, as in a deployment (which rewrites `LOINC`, `LN` and the OID to
`http://loinc.org`); each Observation code decision support does not know becomes a sighting per
sender (`inference.cds.terminology.sightings_in`).

What is right comes from outside the assistant:
- **paired**: the sender coded the same Observation in LOINC too (e.g. ``HAVM^...^L`` beside
  ``22314-9^...^LN``, or SNOMED beside LOINC in FHIR): the LOINC code is dropped, the local one
  is asked about, and the sender's LOINC code is the answer;
- **labelled**: the others, labelled by hand in `bench/data/local_code_truth.json` (LOINC codes
  that are right, or none: an image, a report line, a question with no LOINC result code).

Prints, per code, the first suggestion and whether it is right; then: right first, right in the
first three, no suggestion, wrong first (a wrong first suggestion costs a reviewer more than none).

Usage: python bench/terminology.py [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.corpus import fhir_normalized, hl7_normalized  # noqa: E402
from inference.cds.terminology import LOINC, Sighting, merge, sightings_in, suggest  # noqa: E402
from kernel.analytes import ANALYTES  # noqa: E402
from kernel.events import Envelope, FhirRecord  # noqa: E402

TRUTH = REPO / "bench" / "data" / "local_code_truth.json"
RULE_LOINC = {code for a in ANALYTES for code in a.loinc}
AT = datetime(2026, 1, 1, tzinfo=UTC)


def _record(sender: str, resources: list[dict[str, Any]]) -> FhirRecord:
    envelope = Envelope(
        source_system=sender, source_message_id="-", content_hash="-", received_at=AT, trace_id="-"
    )
    return FhirRecord(envelope=envelope, patient_id="-", resources=resources)


def hl7_records(corpora: Path) -> Iterator[FhirRecord]:
    """The corpus' HL7 v2 messages, normalized (those that normalize)."""
    for result in hl7_normalized(corpora):
        yield _record(result.sender, result.resources)


def fhir_records(corpora: Path) -> Iterator[FhirRecord]:
    """Every Observation of the corpus' FHIR files, one record per file (sender: its source)."""
    found: dict[Path, list[dict[str, Any]]] = {}
    for path, resources in fhir_normalized(corpora):
        found.setdefault(path, []).extend(r for r in resources if r["resourceType"] == "Observation")
    for path, observations in found.items():
        if observations:
            yield _record(f"fhir:{path.relative_to(corpora / 'fhir').parts[0]}", observations)


def paired(record: FhirRecord) -> Iterator[tuple[Sighting, set[str]]]:
    """Observations coded both locally and in LOINC: the local code alone, and the LOINC codes."""
    for obs in record.resources:
        codings = [c for c in (obs.get("code") or {}).get("coding") or [] if isinstance(c, dict)]
        loinc = {str(c.get("code")) for c in codings if c.get("system") == LOINC}
        local = [c for c in codings if c.get("system") != LOINC and c.get("code")]
        if loinc and local:
            alone = {**obs, "code": {**obs["code"], "coding": local[:1]}}
            for one in sightings_in(_record(record.envelope.source_system, [alone]), {}):
                yield one, loinc


def main(args: argparse.Namespace) -> None:
    truth: dict[str, list[str]] = json.loads(TRUTH.read_text())["codes"]
    asked: dict[str, tuple[Sighting, set[str] | None, str]] = {}
    for record in [*hl7_records(args.corpora), *fhir_records(args.corpora)]:
        for one, answer in paired(record):
            before = asked.get(one.key)
            asked[one.key] = (merge(before[0], one) if before else one, answer, "paired")
        for one in sightings_in(record, {}):
            if one.key in asked and asked[one.key][2] == "paired":
                continue
            label = truth.get(f"{one.system}|{one.code}")
            before = asked.get(one.key)
            merged = merge(before[0], one) if before else one
            asked[one.key] = (merged, None if label is None else set(label), "labelled")
    if not asked:
        raise SystemExit("no local codes found: is --corpora right?")
    counts: dict[str, int] = {}
    for sighting, answer, source in sorted(asked.values(), key=lambda a: a[0].key):
        offered = suggest(sighting)
        first = offered[0] if offered else None
        if answer is None:
            verdict = "unlabelled"
        elif not answer:  # nothing is right: offering nothing is the right answer
            verdict = "none-right" if first is None else "wrong"
        elif first is None:
            verdict = "none"
        elif first.loinc in answer:
            by_code = first.reasons[0].startswith("the code is")
            verdict = "right-by-code" if by_code else "right-by-name"
        else:
            verdict = "wrong"
        if answer and any(s.loinc in answer for s in offered[1:3]) and verdict != "right-by-name":
            counts["top3-only"] = counts.get("top3-only", 0) + 1
        if answer and answer & RULE_LOINC:
            counts["rules-asked"] = counts.get("rules-asked", 0) + 1
            counts["rules-right"] = counts.get("rules-right", 0) + verdict.startswith("right")
        counts[verdict] = counts.get(verdict, 0) + 1
        label = f"{first.loinc} {first.label}" if first else "-"
        print(
            f"{verdict:13} {source:8} {sighting.sender[:26]:26} {sighting.system[-18:]:18} "
            f"{sighting.code[:20]:20} {sighting.display[:30]!r:32} -> {label}"
        )
    pairs = sum(1 for v in asked.values() if v[2] == "paired")
    has = sum(1 for v in asked.values() if v[1])
    right = counts.get("right-by-code", 0) + counts.get("right-by-name", 0)
    print(
        f"\n{len(asked)} local codes: {pairs} paired with the sender's LOINC, "
        f"{len(asked) - pairs} labelled by hand"
    )
    print(
        f"{has} have a right LOINC code: first suggestion right {right}/{has} "
        f"({counts.get('right-by-name', 0)} from name, units and values; {counts.get('right-by-code', 0)} "
        f"LOINC codes sent under a local system), right only at 2nd-3rd {counts.get('top3-only', 0)}, "
        f"no suggestion {counts.get('none', 0)}"
    )
    nothing = sum(1 for v in asked.values() if v[1] == set())
    print(
        f"{nothing} have none (images, report lines, questions): left without a suggestion "
        f"{counts.get('none-right', 0)}/{nothing}"
    )
    print(
        f"wrong first suggestions: {counts.get('wrong', 0)}/{len(asked)}; of an analyte the rules read: "
        f"right {counts.get('rules-right', 0)}/{counts.get('rules-asked', 0)}; unlabelled "
        f"{counts.get('unlabelled', 0)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    main(parser.parse_args())
