"""What `clinstream backfill` sends, and in which order (pure but for reading the input files).

A hospital's history arrives in three shapes:

- a FHIR Bulk Data export: NDJSON files, one resource per line, one file per type as
  ``$export`` writes them. Resources are grouped by the patient they are about (the Patient
  itself, or its ``subject``/``patient`` reference) and sent as PUT transaction Bundles, at most
  ``max_resources`` each, the Patient first and the rest oldest first; resources about no
  patient (Organization, Practitioner, Medication) go first, together;
- Synthea (or any) transaction or batch Bundles, one JSON file each: sent as they are;
- HL7 v2 archives: files of messages (one, several, or FHS/BHS batches): one unit per message.

Every unit is named by the SHA-256 of what it sends, so a checkpoint of sent names makes a run
resumable, and sending a unit again changes nothing downstream (deterministic ids). Units are
ordered by patient, then by time (MSH-7 for HL7; the Bundle's earliest date otherwise), so each
patient's history goes in in the order it happened. A line, file or message that cannot be
read becomes a `Refusal` with its place and reason, never a silent skip.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from connectors.send_tool import iter_files, messages_of
from kernel.errors import Hl7Error
from kernel.hl7v2.parser import decode_payload, parse_message, patient_identifier

Kind = Literal["fhir", "hl7"]
SHARED = ""
"""The group of an export's resources that are about no patient (sorted first)."""
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_DATES = ("effectiveDateTime", "issued", "authoredOn", "recordedDate", "onsetDateTime", "occurrenceDateTime")
_PERIODS = ("effectivePeriod", "period", "performedPeriod")


@dataclass(frozen=True, slots=True)
class Unit:
    """One thing to send: a FHIR Bundle (JSON) or one HL7 v2 message."""

    kind: Kind
    patient: str
    when: str
    payload: bytes
    source: str

    @property
    def id(self) -> str:
        """The unit's name in the checkpoint: the SHA-256 of its payload."""
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Input that could not be read, and why (no content in the text)."""

    source: str
    reason: str


@dataclass
class Plan:
    """The units in sending order, and what could not be read."""

    units: list[Unit] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)

    def remaining(self, done: set[str]) -> list[Unit]:
        """The units a resumed run still sends."""
        return [u for u in self.units if u.id not in done]


def resource_time(resource: Mapping[str, Any]) -> str:
    """The clinical time of a resource (ISO text, comparable as a string), or ''."""
    for key in _DATES:
        value = resource.get(key)
        if isinstance(value, str):
            return value
    for key in _PERIODS:
        period = resource.get(key)
        if isinstance(period, Mapping) and isinstance(period.get("start"), str):
            return str(period["start"])
    return ""


def patient_of(resource: Mapping[str, Any]) -> str | None:
    """``Patient/<id>`` a resource is about (itself for a Patient), or None."""
    if resource.get("resourceType") == "Patient" and isinstance(resource.get("id"), str):
        return f"Patient/{resource['id']}"
    for key in ("subject", "patient", "beneficiary"):
        ref = resource.get(key)
        if isinstance(ref, Mapping) and isinstance(ref.get("reference"), str):
            value = str(ref["reference"])
            if value.startswith("Patient/"):
                return value
    return None


def ndjson_units(
    lines: Iterable[tuple[str, str]], *, max_resources: int = 200
) -> tuple[list[Unit], list[Refusal]]:
    """PUT transaction Bundles per patient from ``(source, line)`` pairs of a Bulk Data export."""
    by_patient: dict[str, list[dict[str, Any]]] = defaultdict(list)
    refused: list[Refusal] = []
    for source, line in lines:
        if not line.strip():
            continue
        try:
            resource = json.loads(line)
        except ValueError:
            refused.append(Refusal(source, "not a JSON line"))
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            refused.append(Refusal(source, "not a FHIR resource"))
            continue
        if not isinstance(resource.get("id"), str) or not FHIR_ID.match(resource["id"]):
            refused.append(Refusal(source, f"{resource['resourceType']} without a valid id"))
            continue
        # Organizations, Practitioners, Medications... go together, first, so that the
        # patients' resources find what they reference
        by_patient[patient_of(resource) or SHARED].append(resource)
    units = []
    for patient, resources in by_patient.items():
        resources.sort(
            key=lambda r: (r["resourceType"] != "Patient", resource_time(r), r["resourceType"], r["id"])
        )
        for start in range(0, len(resources), max_resources):
            chunk = resources[start : start + max_resources]
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "fullUrl": f"{r['resourceType']}/{r['id']}",
                        "resource": r,
                        "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                    }
                    for r in chunk
                ],
            }
            when = min((t for t in map(resource_time, chunk) if t), default="")
            payload = json.dumps(bundle, sort_keys=True, separators=(",", ":")).encode()
            units.append(Unit("fhir", patient, when, payload, f"ndjson:{patient}#{start // max_resources}"))
    return units, refused


def _in_time(resource: Mapping[str, Any]) -> tuple[bool, str, str, str]:
    """The Patient first, then oldest first (ties by type and id: the same order every run)."""
    kind = str(resource["resourceType"])
    return (kind != "Patient", resource_time(resource), kind, str(resource["id"]))


def bundle_unit(source: str, text: str) -> Unit | Refusal:
    """A transaction or batch Bundle file as one unit."""
    try:
        bundle = json.loads(text)
    except ValueError:
        return Refusal(source, "not JSON")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return Refusal(source, "not a Bundle")
    if bundle.get("type") not in ("transaction", "batch"):
        return Refusal(source, f"a {bundle.get('type')} Bundle, not a transaction or batch")
    resources: list[dict[str, Any]] = [
        e["resource"]
        for e in bundle.get("entry", [])
        if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]
    patients = [p for p in map(patient_of, resources) if p]
    patient = patients[0] if patients else f"file:{source}"
    when = min((t for t in map(resource_time, resources) if t), default="")
    return Unit("fhir", patient, when, text.encode(), source)


def hl7_unit(source: str, message: bytes) -> Unit | Refusal:
    """One HL7 v2 message as a unit: its patient (the stream's own reading of PID-3) and its
    time (MSH-7)."""
    try:
        parsed = parse_message(decode_payload(message))
        authority, identifier = patient_identifier(parsed)
    except Hl7Error as exc:
        return Refusal(source, f"HL7 error {exc.code}: no readable header or patient identifier")
    return Unit("hl7", f"{authority}|{identifier}", parsed.msh.value(7), message, source)


def read(paths: Iterable[Path], *, max_resources: int = 200) -> Plan:
    """Every unit in the files and folders named, in sending order."""
    plan = Plan()
    lines: list[tuple[str, str]] = []
    for path in iter_files(list(paths)):
        name = str(path)
        if path.suffix == ".ndjson":
            lines += [(f"{name}:{n + 1}", line) for n, line in enumerate(_lines(path))]
        elif path.suffix == ".json":
            found = bundle_unit(name, path.read_text(encoding="utf-8"))
            if isinstance(found, Refusal):
                plan.refused.append(found)
            else:
                plan.units.append(found)
        else:
            for n, message in enumerate(messages_of(path)):
                found_msg = hl7_unit(f"{name}#{n + 1}", message)
                if isinstance(found_msg, Refusal):
                    plan.refused.append(found_msg)
                else:
                    plan.units.append(found_msg)
    units, refused = ndjson_units(lines, max_resources=max_resources)
    plan.units += units
    plan.refused += refused
    plan.units.sort(key=lambda u: (u.patient, u.when, u.source))
    return plan


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8", errors="replace") as f:
        yield from f


def load_checkpoint(path: Path) -> set[str]:
    """The units a previous run sent (one JSON line each); empty when there is no file yet."""
    if not path.is_file():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by an interrupt: that unit is sent again
        if isinstance(entry, dict) and isinstance(entry.get("unit"), str):
            done.add(entry["unit"])
    return done


def checkpoint_line(unit: Unit, outcome: str) -> str:
    """The line appended once the deployment confirmed ``unit``."""
    return json.dumps({"unit": unit.id, "source": unit.source, "outcome": outcome}, sort_keys=True) + "\n"
