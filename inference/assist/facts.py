"""What the suggestion rules know of a patient, read once from the chart. Pure.

`facts(chart, at)` gathers the readings of every analyte the rules use (`kernel.analytes`, in
canonical units, oldest first), the current problem list and medication courses
(`kernel.chart`), active allergies, age, sex, pregnancy and race, so each rule is a few lines
over plain values. A reading that cannot be read (a unit that does not convert) is left out: a
rule never compares a number in the wrong unit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from kernel.analytes import Reading, readings_of
from kernel.chart import Chart, Course, Problem, age_at, current_problems, instant, medication_courses, sex_of
from kernel.errors import RuleInputError
from kernel.rendering import concept_text

US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
BLACK = "2054-5"  # CDC Race & Ethnicity: Black or African American
PREGNANCY_WEEKS = 42
_GONE_ALLERGY = frozenset({"inactive", "resolved"})


@dataclass(frozen=True, slots=True)
class Allergy:
    """An active allergy or intolerance, as written."""

    ref: str
    text: str


@dataclass(frozen=True, slots=True)
class Facts:
    """One patient at one time, as the rules see them."""

    patient_id: str
    at: datetime
    age: float | None
    sex: str
    black: bool
    pregnant_since: datetime | None
    readings: Mapping[str, tuple[Reading, ...]]
    problems: tuple[Problem, ...]
    courses: tuple[Course, ...]
    allergies: tuple[Allergy, ...]
    resources: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # the chart's, by reference

    def text_of(self, ref: str) -> str:
        """What an evidence item shows of a resource: its concept's text (``""`` without one)."""
        concept = self.resources.get(ref, {}).get("code") or self.resources.get(ref, {}).get(
            "medicationCodeableConcept"
        )
        return concept_text(concept) if isinstance(concept, dict) else ""

    def series(self, analyte: str) -> tuple[Reading, ...]:
        """Readings of ``analyte``, oldest first."""
        return self.readings.get(analyte, ())

    def latest(self, analyte: str) -> Reading | None:
        """The newest reading of ``analyte``."""
        found = self.series(analyte)
        return found[-1] if found else None

    def active_courses(self) -> list[Course]:
        """Medication courses with an active order."""
        return [c for c in self.courses if c.active]

    @property
    def pregnant(self) -> bool:
        """A current pregnancy on the problem list."""
        return self.pregnant_since is not None

    def gestation_weeks(self) -> float | None:
        """Weeks since the pregnancy's onset (its best estimate of gestational age)."""
        if self.pregnant_since is None:
            return None
        return (self.at - self.pregnant_since).days / 7


def _readings(chart: Chart, at: datetime) -> dict[str, tuple[Reading, ...]]:
    by_analyte: dict[str, list[Reading]] = {}
    for obs in chart.of("Observation"):
        try:
            found = readings_of(obs)
        except RuleInputError:
            continue
        for reading in found:
            if reading.value is not None and reading.at <= at:
                by_analyte.setdefault(reading.analyte, []).append(reading)
    return {k: tuple(sorted(v, key=lambda r: (r.at, r.ref))) for k, v in by_analyte.items()}


def _allergies(chart: Chart) -> tuple[Allergy, ...]:
    out = []
    for allergy in chart.of("AllergyIntolerance"):
        status = {c.get("code") for c in (allergy.get("clinicalStatus") or {}).get("coding", [])}
        if status & _GONE_ALLERGY:
            continue
        text = concept_text(allergy.get("code"))
        if text:
            out.append(Allergy(f"AllergyIntolerance/{allergy['id']}", text))
    return tuple(out)


def _black(patient: Mapping[str, Any] | None) -> bool:
    for ext in (patient or {}).get("extension", []):
        if ext.get("url") != US_CORE_RACE:
            continue
        for part in ext.get("extension", []):
            if (part.get("valueCoding") or {}).get("code") == BLACK:
                return True
    return False


def _pregnancy(problems: Sequence[Problem], at: datetime) -> datetime | None:
    for p in problems:
        lowered = p.text.lower()
        if "pregnan" not in lowered or any(w in lowered for w in ("history", "tubal", "ectopic", "loss")):
            continue
        if p.onset is not None and at - p.onset <= timedelta(weeks=PREGNANCY_WEEKS):
            return p.onset
    return None


def facts(chart: Chart, at: datetime) -> Facts:
    """The patient of ``chart`` as of ``at`` (data recorded after ``at`` is not seen)."""
    patient = chart.patient()
    died = instant((patient or {}).get("deceasedDateTime"))
    when = min(at, died) if died is not None else at
    problems = tuple(current_problems(chart, when))
    return Facts(
        patient_id=chart.patient_id,
        at=when,
        age=age_at(chart, when),
        sex=sex_of(chart),
        black=_black(patient),
        pregnant_since=_pregnancy(problems, when),
        readings=_readings(chart, when),
        problems=problems,
        courses=tuple(medication_courses(chart, when)),
        allergies=_allergies(chart),
        resources=chart.resources,
    )


def shown(reading: Reading) -> str:
    """A reading as the clinician saw it, with its date: ``6.8 % on 2020-01-02``."""
    return f"{reading.as_sent} on {reading.at.date().isoformat()}"


def number(value: Decimal) -> str:
    """A threshold or value without trailing zeros (``6.5``, ``30``)."""
    return format(value.normalize(), "f")
