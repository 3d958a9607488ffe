"""Per-patient clinical state, rebuilt from the normalized records on `ehr.fhir.v1`.

Pure functions over a JSON-serialisable model, so the state store can snapshot it as is.
`apply(state, record)` is idempotent: everything is keyed by resource reference, so a record
delivered twice, or an update of a resource, leaves one entry; an `entered-in-error` (or
cancelled, refuted) resource removes what it replaced. Values arrive in canonical units
(`kernel.analytes`); history is bounded (`HISTORY`, `MAX_READINGS`) so a patient with years
of results stays small: the rules look back at most 7 days (KDIGO's baseline window).

`alerts` and `snoozes` are the alert hygiene's memory (`inference.cds.hygiene`); they live here so
that one snapshot holds everything a restart needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from kernel.analytes import Reading, readings_of
from kernel.chart import ended
from kernel.drugs import drug_writing
from kernel.errors import RuleInputError
from kernel.events import Alert, FhirRecord
from kernel.rendering import first_code
from kernel.writeback import ChartIdentifier, chart_identifier

HISTORY = timedelta(days=8)
MAX_READINGS = 64
_GONE = frozenset({"entered-in-error", "cancelled"})


class Coded(BaseModel):
    """A medication, allergy or condition: its codes (``system|code``), text and status."""

    ref: str
    text: str
    codes: list[str] = Field(default_factory=list)
    status: str = ""
    category: list[str] = Field(default_factory=list)
    criticality: str = ""
    recorded: str = ""
    drug: str = ""
    """The writing of a medication that names a drug (`kernel.drugs.drug_writing`), or an
    allergy's text with its substance's: what the interaction, allergy and renal rules read.
    Empty: the text."""

    @property
    def drug_text(self) -> str:
        """What the drug tables read: ``drug``, else ``text``."""
        return self.drug or self.text


class EncounterInfo(BaseModel):
    """The patient's most recent encounter."""

    ref: str
    status: str
    klass: str = ""
    start: str = ""
    end: str = ""


class PatientState(BaseModel):
    """Everything the rules read about one patient."""

    patient_id: str
    birth_date: date | None = None
    gender: str = ""
    identifier: ChartIdentifier | None = None
    readings: dict[str, list[Reading]] = Field(default_factory=dict)
    medications: dict[str, Coded] = Field(default_factory=dict)
    allergies: dict[str, Coded] = Field(default_factory=dict)
    conditions: dict[str, Coded] = Field(default_factory=dict)
    encounter: EncounterInfo | None = None
    # The last alert raised per dedupe key: hygiene compares with it, CDS Hooks cards show it.
    alerts: dict[str, Alert] = Field(default_factory=dict)
    snoozes: dict[str, datetime] = Field(default_factory=dict)

    def latest(self, analyte: str, *, at: datetime, window: timedelta) -> Reading | None:
        """The most recent reading of ``analyte`` taken in ``(at - window, at]``."""
        for reading in reversed(self.readings.get(analyte, [])):
            if reading.at <= at:
                return reading if reading.at > at - window else None
        return None

    def series(self, analyte: str, *, at: datetime, window: timedelta) -> list[Reading]:
        """Readings of ``analyte`` in ``[at - window, at]``, oldest first."""
        return [r for r in self.readings.get(analyte, []) if at - window <= r.at <= at]

    def active_medications(self) -> list[Coded]:
        """Medications currently ordered or taken."""
        return [m for m in self.medications.values() if m.status in ("active", "on-hold", "intended")]

    def active_allergies(self) -> list[Coded]:
        """Allergies and intolerances not resolved or refuted."""
        return [a for a in self.allergies.values() if a.status in ("", "active")]

    def active_conditions(self) -> list[Coded]:
        """Problems and diagnoses that are active."""
        return [c for c in self.conditions.values() if c.status in ("", "active", "recurrence", "relapse")]


def _codes(concept: dict[str, Any] | None) -> tuple[list[str], str]:
    if not concept:
        return [], ""
    codings = concept.get("coding", [])
    codes = [f"{c.get('system', '')}|{c['code']}" for c in codings if c.get("code")]
    text = concept.get("text") or next((c["display"] for c in codings if c.get("display")), "")
    return codes, str(text)


def _remove_readings(readings: dict[str, list[Reading]], ref: str) -> None:
    for name in list(readings):
        kept = [r for r in readings[name] if r.ref != ref]
        if kept:
            readings[name] = kept
        else:
            del readings[name]


def _add_readings(readings: dict[str, list[Reading]], new: list[Reading]) -> None:
    for reading in new:
        series = readings.setdefault(reading.analyte, [])
        series.append(reading)
        series.sort(key=lambda r: (r.at, r.ref))
        newest = series[-1].at
        readings[reading.analyte] = [r for r in series if r.at > newest - HISTORY][-MAX_READINGS:]


def medication(res: dict[str, Any], ref: str) -> Coded:
    """A MedicationRequest or MedicationStatement as the rules read it."""
    concept = res.get("medicationCodeableConcept")
    codes, text = _codes(concept)
    shown = str((res.get("medicationReference") or {}).get("display") or "")
    text = text or shown
    return Coded(
        ref=ref,
        text=text,
        drug=drug_writing(concept, shown),
        codes=codes,
        status=str(res.get("status", "")),
        recorded=str(res.get("authoredOn") or res.get("dateAsserted") or ""),
    )


def _allergy(res: dict[str, Any], ref: str) -> Coded | None:
    verification = first_code(res.get("verificationStatus"))
    if verification in ("refuted", "entered-in-error"):
        return None
    codes, text = _codes(res.get("code"))
    writings = [text, drug_writing(res.get("code"))]
    for reaction in res.get("reaction", []):
        more, more_text = _codes(reaction.get("substance"))
        codes.extend(more)
        text = text or more_text
        writings.append(drug_writing(reaction.get("substance")))
    return Coded(
        ref=ref,
        text=text,
        drug=" / ".join(dict.fromkeys(w for w in writings if w)),
        codes=codes,
        status=first_code(res.get("clinicalStatus")),
        category=list(res.get("category", [])),
        criticality=str(res.get("criticality", "")),
        recorded=str(res.get("recordedDate") or ""),
    )


def _condition(res: dict[str, Any], ref: str, at: datetime) -> Coded | None:
    if first_code(res.get("verificationStatus")) in ("refuted", "entered-in-error"):
        return None
    codes, text = _codes(res.get("code"))
    status = first_code(res.get("clinicalStatus"))
    if ended(res, at):  # the problem list's own reading (kernel.chart), as of the record
        status = status if status in ("inactive", "resolved", "remission") else "resolved"
    return Coded(
        ref=ref,
        text=text,
        codes=codes,
        status=status,
        recorded=str(res.get("onsetDateTime") or res.get("recordedDate") or ""),
    )


def _encounter(current: EncounterInfo | None, res: dict[str, Any], ref: str) -> EncounterInfo | None:
    period = res.get("period") or {}
    info = EncounterInfo(
        ref=ref,
        status=str(res.get("status", "")),
        klass=str((res.get("class") or {}).get("code", "")),
        start=str(period.get("start", "")),
        end=str(period.get("end", "")),
    )
    if info.status in _GONE:
        return None if current is not None and current.ref == ref else current
    if current is None or current.ref == ref or info.start >= current.start:
        return info
    return current


def apply(
    state: PatientState, record: FhirRecord, local_codes: Mapping[str, str] | None = None
) -> PatientState:
    """``state`` with ``record``'s resources applied (a new object; ``state`` is unchanged).

    The copy is structural: new containers, the same entries. Entries (readings, alerts) are
    frozen or only ever replaced, never changed in place, so sharing them is safe, and a deep copy
    of a long record's state was a fifth of decision support's time (`bench/cds_backlog.py`)."""
    new = state.model_copy(
        update={
            "readings": {name: list(series) for name, series in state.readings.items()},
            "medications": dict(state.medications),
            "allergies": dict(state.allergies),
            "conditions": dict(state.conditions),
        }
    )
    for res in record.resources:
        kind = res.get("resourceType")
        if not res.get("id"):
            raise RuleInputError(f"{kind} without an id")
        ref = f"{kind}/{res['id']}"
        status = str(res.get("status", ""))
        if kind == "Patient":
            new.gender = str(res.get("gender", ""))
            birth = res.get("birthDate")
            new.birth_date = date.fromisoformat(birth) if birth and len(birth) == 10 else None
            new.identifier = chart_identifier(res) or new.identifier
        elif kind == "Observation":
            _remove_readings(new.readings, ref)
            _add_readings(
                new.readings, readings_of(res, local_codes, received_at=record.envelope.received_at)
            )
        elif kind in ("MedicationRequest", "MedicationStatement"):
            if status in _GONE:
                new.medications.pop(ref, None)
            else:
                new.medications[ref] = medication(res, ref)
        elif kind == "AllergyIntolerance":
            allergy = _allergy(res, ref)
            if allergy is None:
                new.allergies.pop(ref, None)
            else:
                new.allergies[ref] = allergy
        elif kind == "Condition":
            condition = _condition(res, ref, record.envelope.received_at)
            if condition is None:
                new.conditions.pop(ref, None)
            else:
                new.conditions[ref] = condition
        elif kind == "Encounter":
            new.encounter = _encounter(new.encounter, res, ref)
    return new
