"""Conversion oracle: our HL7 v2 → FHIR output against FHIR-Converter's expected bundles.

For every FHIR-Converter sample that has an expected bundle, the sample is normalized with
`stream.normalize.normalize_hl7` and compared, resource type by resource type, with the
expected bundle on the fields listed in ``COMPARED`` (identifiers, codes, values and units,
dates, statuses, and which resource type each reference points at). Resources of one type
are paired greedily by how many compared fields they share.

- **agreement**: of the fields FHIR-Converter filled, the share where we wrote values too and
  every value we wrote is among theirs (dates compared as instants, numbers as decimals,
  local code systems by their HL7 name). A field they filled and we left empty (on a paired
  resource, or on a resource of theirs we have no counterpart for) is an omission and counts
  as a disagreement. A field where they wrote more values than we did (a second identifier,
  an alias name) agrees, and the values we lack count against **value coverage**.
- **both filled**: the same share over the fields both sides filled only (omissions left out:
  the figure the README quoted before the omissions were counted, kept for comparison).
- **value coverage**: of FHIR-Converter's values in compared fields, the share we also wrote.
- **missing / extra**: fields only FHIR-Converter filled, or only we did (not in the %).
- **counts**: resources per type on each side, for the types we produce.

Resource types we deliberately do not emit (MessageHeader, Provenance, Organization,
Practitioner, Location, ...; see docs/mapping.md) are left out. A sample whose message type
we do not map, or that our normalizer refuses, is listed with the reason.

Usage: python bench/agreement.py [--corpora ../shared/corpora] [--details]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from kernel.errors import Hl7Error
from kernel.hl7v2.parser import decode_payload, parse_message
from stream.normalize import normalize_hl7

SAMPLES = ("hl7v2/microsoft-fhir-converter", "expected/microsoft-fhir-converter")
REF = "->"  # marks a reference path: its value is the target's resource type

COMPARED: dict[str, tuple[str, ...]] = {
    "Patient": (
        "identifier.value",
        "name.family",
        "name.given",
        "birthDate",
        "gender",
        "address.city",
        "address.postalCode",
        "deceasedBoolean",
    ),
    "Encounter": ("identifier.value", "status", "class.code", "period.start", "period.end", "subject->"),
    "Observation": (
        "code.coding.code",
        "code.coding.system",
        "status",
        "valueQuantity.value",
        "valueQuantity.unit",
        "valueString",
        "valueCodeableConcept.coding.code",
        "valueDateTime",
        "effectiveDateTime",
        "referenceRange.low.value",
        "referenceRange.high.value",
        "interpretation.coding.code",
        "subject->",
        "encounter->",
    ),
    "DiagnosticReport": (
        "code.coding.code",
        "status",
        "effectiveDateTime",
        "issued",
        "subject->",
        "basedOn->",
        "result->",
        "specimen->",
    ),
    "ServiceRequest": (
        "identifier.value",
        "code.coding.code",
        "status",
        "intent",
        "authoredOn",
        "priority",
        "subject->",
        "encounter->",
    ),
    "Specimen": (
        "identifier.value",
        "type.coding.code",
        "collection.collectedDateTime",
        "receivedTime",
        "subject->",
    ),
    "MedicationRequest": (
        "identifier.value",
        "medicationCodeableConcept.coding.code",
        "status",
        "intent",
        "authoredOn",
        "dosageInstruction.route.coding.code",
        "dosageInstruction.doseAndRate.doseQuantity.value",
        "dispenseRequest.quantity.value",
        "subject->",
    ),
    "MedicationDispense": (
        "medicationCodeableConcept.coding.code",
        "quantity.value",
        "whenHandedOver",
        "status",
        "subject->",
    ),
    "MedicationAdministration": ("medicationCodeableConcept.coding.code", "status", "subject->"),
    "Immunization": (
        "vaccineCode.coding.code",
        "occurrenceDateTime",
        "status",
        "lotNumber",
        "doseQuantity.value",
        "patient->",
    ),
    "AllergyIntolerance": (
        "code.coding.code",
        "clinicalStatus.coding.code",
        "criticality",
        "type",
        "category",
        "patient->",
    ),
    "Condition": ("code.coding.code", "clinicalStatus.coding.code", "onsetDateTime", "subject->"),
    "DocumentReference": ("type.coding.code", "status", "docStatus", "subject->"),
    "Procedure": ("code.coding.code", "status", "performedDateTime", "subject->", "encounter->"),
    "Coverage": ("identifier.value", "status", "subscriberId", "period.start", "period.end", "beneficiary->"),
    "Appointment": (
        "identifier.value",
        "status",
        "start",
        "end",
        "minutesDuration",
        "serviceType.coding.code",
        "reasonCode.coding.code",
    ),
}
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T")
# A coding system HL7 names locally (CWE.3 "L", "99XYZ"): both converters make a URI of the name.
_LOCAL_SYSTEM = re.compile(
    r"^(?:urn:clinstream:codesystem:|http://example\.com/v2-to-fhir-converter/codesystem/)(.+)$",
    re.IGNORECASE,
)


@dataclass
class Tally:
    """Field comparisons for one scope (a message type, or the whole corpus)."""

    agree: int = 0
    compared: int = 0
    their_values: int = 0
    shared_values: int = 0
    missing: int = 0
    extra: int = 0
    disagreements: Counter[str] = field(default_factory=Counter)
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, "ours"/"theirs")

    def add(self, other: Tally) -> None:
        self.agree += other.agree
        self.compared += other.compared
        self.their_values += other.their_values
        self.shared_values += other.shared_values
        self.missing += other.missing
        self.extra += other.extra
        self.disagreements.update(other.disagreements)
        self.counts.update(other.counts)

    @property
    def rate(self) -> float:
        """Agreement on the fields FHIR-Converter filled: an omission is a disagreement."""
        filled = self.compared + self.missing
        return self.agree / filled if filled else 0.0

    @property
    def both_filled_rate(self) -> float:
        """Agreement on the fields both converters filled (omissions not counted)."""
        return self.agree / self.compared if self.compared else 0.0

    @property
    def coverage(self) -> float:
        return self.shared_values / self.their_values if self.their_values else 0.0


def _walk(node: Any, parts: list[str]) -> Iterator[Any]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, parts)
        return
    if not parts:
        yield node
        return
    if isinstance(node, dict) and parts[0] in node:
        yield from _walk(node[parts[0]], parts[1:])


def _norm(value: Any) -> str:
    """Comparable text: instants in UTC, numbers as decimals, text trimmed and case-folded."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(Decimal(str(value)).normalize())
    text = str(value).strip()
    local = _LOCAL_SYSTEM.match(text)
    if local:
        return f"local:{local[1].casefold().replace(' ', '-')}"
    if _DATETIME.match(text):
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return text
        if stamp.tzinfo is not None:
            return stamp.astimezone(ZoneInfo("UTC")).isoformat()
        return stamp.isoformat()
    try:
        return str(Decimal(text).normalize()) if re.fullmatch(r"-?\d+(\.\d+)?", text) else text.casefold()
    except InvalidOperation:  # pragma: no cover - guarded by the pattern
        return text.casefold()


def values(resource: dict[str, Any], path: str) -> frozenset[str]:
    """The normalized values at a dotted path; for ``x->`` the resource types x points at."""
    if path.endswith(REF):
        refs = _walk(resource, [*path[: -len(REF)].split("."), "reference"])
        return frozenset(str(r).split("/")[0] for r in refs if isinstance(r, str) and "/" in r)
    return frozenset(_norm(v) for v in _walk(resource, path.split(".")) if v not in (None, ""))


def compare_pair(kind: str, ours: dict[str, Any], theirs: dict[str, Any], tally: Tally) -> int:
    """Compare one paired resource on its type's fields; returns the number that agree."""
    agree = 0
    for path in COMPARED[kind]:
        mine, expected = values(ours, path), values(theirs, path)
        if mine and expected:
            tally.compared += 1
            tally.their_values += len(expected)
            tally.shared_values += len(mine & expected)
            if mine <= expected:
                tally.agree += 1
                agree += 1
            else:
                tally.disagreements[f"{kind}.{path}"] += 1
        elif expected:
            tally.missing += 1
        elif mine:
            tally.extra += 1
    return agree


def _overlap(kind: str, a: dict[str, Any], b: dict[str, Any]) -> int:
    return sum(1 for path in COMPARED[kind] if (va := values(a, path)) and va == values(b, path))


def compare_message(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> Tally:
    """Compare our resources for one message with the expected bundle's resources."""
    tally = Tally()
    by_kind_ours: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_kind_theirs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ours:
        by_kind_ours[r["resourceType"]].append(r)
    for r in theirs:
        if r["resourceType"] in COMPARED:
            by_kind_theirs[r["resourceType"]].append(r)
    for kind in sorted(set(by_kind_ours) | set(by_kind_theirs)):
        mine, expected = by_kind_ours[kind], list(by_kind_theirs[kind])
        tally.counts[(kind, "ours")] += len(mine)
        tally.counts[(kind, "theirs")] += len(expected)
        if kind not in COMPARED:
            continue
        for resource in mine:
            if not expected:
                break
            best = max(expected, key=lambda e, r=resource, k=kind: _overlap(k, r, e))  # type: ignore[misc]
            expected.remove(best)
            compare_pair(kind, resource, best, tally)
        for unmatched in expected:  # theirs with no counterpart of ours: every field is omitted
            compare_pair(kind, {}, unmatched, tally)
    return tally


def sample_pairs(corpora: Path) -> Iterable[tuple[str, Path, Path]]:
    """(name, HL7 file, expected bundle) for every sample with an expected bundle."""
    source_dir, expected_dir = (corpora / s for s in SAMPLES)
    for expected in sorted(expected_dir.glob("*-expected.json")):
        name = expected.name.removesuffix("-expected.json")
        source = source_dir / f"{name}.hl7"
        if source.is_file():
            yield name, source, expected


@dataclass
class Report:
    by_type: dict[str, Tally]
    total: Tally
    converted: int
    refused: list[tuple[str, str, str]]  # (sample, message type, reason)


def run(corpora: Path) -> Report:
    """Normalize and compare every sample; the figures the table prints."""
    by_type: dict[str, Tally] = defaultdict(Tally)
    total = Tally()
    refused: list[tuple[str, str, str]] = []
    converted = 0
    tz = ZoneInfo("UTC")
    for name, source, expected in sample_pairs(corpora):
        text = decode_payload(source.read_bytes())
        try:
            message_type = parse_message(text).message_type
        except Hl7Error as exc:
            refused.append((name, "?", f"{type(exc).__name__}: {exc}"))
            continue
        try:
            result = normalize_hl7(text, tz=tz)
        except Hl7Error as exc:
            refused.append((name, message_type, f"{type(exc).__name__}: {exc}"))
            continue
        converted += 1
        ours = result.resources + [r for _, also in result.also for r in also]
        bundle = json.loads(expected.read_text(encoding="utf-8-sig"))
        theirs = [e["resource"] for e in bundle.get("entry", [])]
        tally = compare_message(ours, theirs)
        by_type[message_type].add(tally)
        total.add(tally)
    return Report(dict(by_type), total, converted, refused)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    parser.add_argument("--details", action="store_true", help="print the fields that disagree most")
    args = parser.parse_args()
    report = run(args.corpora)
    samples = report.converted + len(report.refused)
    print(f"samples with an expected bundle: {samples}; converted: {report.converted}")
    print("agreement: of the fields FHIR-Converter filled, omissions counted as disagreements")
    header = f"{'message type':<14} {'agree':>6} {'filled':>7} {'agreement':>10} {'both filled':>12}"
    print(f"{header} {'values':>7} {'missing':>8} {'extra':>6}")
    rows = [*sorted(report.by_type.items()), ("all", report.total)]
    for message_type, t in rows:
        print(
            f"{message_type:<14} {t.agree:>6} {t.compared + t.missing:>7} {t.rate:>10.1%}"
            f" {t.both_filled_rate:>12.1%} {t.coverage:>7.1%} {t.missing:>8} {t.extra:>6}"
        )
    t = report.total
    print("resources per type (ours / FHIR-Converter):")
    kinds = sorted({k for k, _ in t.counts if k in COMPARED})
    print("  " + ", ".join(f"{k} {t.counts[(k, 'ours')]}/{t.counts[(k, 'theirs')]}" for k in kinds))
    if report.refused:
        print(f"not converted ({len(report.refused)}):")
        reasons = Counter(f"{mt}: {reason}" for _, mt, reason in report.refused)
        for reason, n in reasons.most_common():
            print(f"  {n:>3} x {reason}")
    if args.details:
        print("fields that disagree most:")
        for path, n in t.disagreements.most_common(25):
            print(f"  {n:>4} {path}")


if __name__ == "__main__":
    main()
