"""NEWS2, the National Early Warning Score 2 (Royal College of Physicians, 2017).

Pure functions. Each of the seven parameters is scored from the chart's printed bands
(`RESPIRATION`, `SPO2_SCALE_1`, …: inclusive upper bound → score; a value between two printed
bands, e.g. 35.05 °C, falls in the upper one). The most recent value of each parameter within
the window counts. SpO2 Scale 2 is used when the patient has an active condition that sets a
target of 88–92 % (hypercapnic respiratory failure; configurable codes). Supplemental oxygen is
read from inhaled oxygen flow (3151-8) > 0 or FiO2 (3150-0) > 21 %; with neither recorded the
patient is scored as breathing air, and the explanation says so.

Clinical response thresholds (RCP 2017, chart 2): any single parameter scoring 3 (low–medium,
urgent ward-based response), aggregate 5–6 (medium, key threshold for urgent response),
aggregate 7 or more (high, emergency response). Aggregates 0–4 with no red score raise nothing.
A missing parameter cannot lower the score, so a partial aggregate that already reaches a
threshold is reported (as partial, naming what is missing); below the thresholds it is not.
NEWS2 is not validated under 16 years of age: those patients are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from inference.cds.findings import Finding, input_of, newest
from inference.cds.state import PatientState
from kernel.analytes import Reading
from kernel.events import AlertInput, Severity

RULE_ID = "news2"
RULE_VERSION = "1.0.0"
CITATION = (
    "Royal College of Physicians. National Early Warning Score (NEWS) 2: Standardising the assessment "
    "of acute-illness severity in the NHS. Updated report of a working party. London: RCP, 2017."
)
Bands = tuple[tuple[Decimal | None, int], ...]


def _bands(*pairs: tuple[str | None, int]) -> Bands:
    return tuple((Decimal(bound) if bound is not None else None, score) for bound, score in pairs)


# Chart 1 of the 2017 report: (inclusive upper bound, score); None is "and above".
RESPIRATION = _bands(("8", 3), ("11", 1), ("20", 0), ("24", 2), (None, 3))
SPO2_SCALE_1 = _bands(("91", 3), ("93", 2), ("95", 1), (None, 0))
SYSTOLIC = _bands(("90", 3), ("100", 2), ("110", 1), ("219", 0), (None, 3))
PULSE = _bands(("40", 3), ("50", 1), ("90", 0), ("110", 1), ("130", 2), (None, 3))
TEMPERATURE = _bands(("35.0", 3), ("36.0", 1), ("38.0", 0), ("39.0", 1), (None, 2))
# Scale 2 (target 88–92 %): 88–92, and ≥ 93 on air, score 0; above 92 on oxygen scores up.
SPO2_SCALE_2_LOW = _bands(("83", 3), ("85", 2), ("87", 1), (None, 0))
SPO2_SCALE_2_ON_OXYGEN_HIGH = _bands(("92", 0), ("94", 1), ("96", 2), (None, 3))
OXYGEN_SCORE = 2
NEW_CONFUSION_OR_WORSE = 3
AIR_FIO2_PERCENT = Decimal(21)
# ICD-10-CM "with hypercapnia" respiratory failure codes (J96.x2).
DEFAULT_SCALE_2_CODES = (
    "http://hl7.org/fhir/sid/icd-10-cm|J96.02",
    "http://hl7.org/fhir/sid/icd-10-cm|J96.12",
    "http://hl7.org/fhir/sid/icd-10-cm|J96.22",
    "http://hl7.org/fhir/sid/icd-10-cm|J96.92",
)
MIN_AGE_YEARS = 16
PARAMETERS = 7


@dataclass(frozen=True, slots=True)
class News2Config:
    """Deployment choices: the look-back window and what selects SpO2 Scale 2."""

    window: timedelta = timedelta(hours=24)
    scale_2_codes: tuple[str, ...] = DEFAULT_SCALE_2_CODES


def band_score(value: Decimal, bands: Bands) -> int:
    """The score of ``value`` in a chart row."""
    for upper, score in bands:
        if upper is None or value <= upper:
            return score
    raise AssertionError("a chart row ends with an open band")  # pragma: no cover


def spo2_scale_2(value: Decimal, *, on_oxygen: bool) -> int:
    """SpO2 Scale 2 score: the low bands, then on oxygen the high bands (on air ≥ 88 % scores 0)."""
    low = band_score(value, SPO2_SCALE_2_LOW)
    if low or not on_oxygen:
        return low
    return band_score(value, SPO2_SCALE_2_ON_OXYGEN_HIGH)


def consciousness_score(acvpu: str) -> int:
    """Alert scores 0; new confusion, voice, pain or unresponsive score 3."""
    return 0 if acvpu == "A" else NEW_CONFUSION_OR_WORSE


@dataclass(frozen=True, slots=True)
class News2Score:
    """An aggregate with its parts; ``missing`` names the parameters with no value in the window."""

    aggregate: int
    red: bool
    missing: tuple[str, ...]
    inputs: tuple[AlertInput, ...]
    scale: int


def _age(birth: date, at: datetime) -> int:
    day = at.date()
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def score(state: PatientState, at: datetime, config: News2Config) -> News2Score:
    """NEWS2 from the most recent values within ``config.window`` before ``at``."""

    def latest(name: str) -> Reading | None:
        return state.latest(name, at=at, window=config.window)

    parts: list[int] = []
    inputs: list[AlertInput] = []
    missing: list[str] = []

    def add(label: str, reading: Reading | None, points: int | None) -> None:
        if reading is None or points is None:
            missing.append(label)
            return
        parts.append(points)
        inputs.append(input_of(label, reading, str(points)))

    flow, fio2 = latest("oxygen_flow"), latest("fio2")
    on_oxygen = bool(
        (flow is not None and flow.value is not None and flow.value > 0)
        or (fio2 is not None and fio2.value is not None and fio2.value > AIR_FIO2_PERCENT)
    )
    conditions = {code for cond in state.active_conditions() for code in cond.codes}
    scale = 2 if conditions & set(config.scale_2_codes) else 1

    def numeric(name: str, bands: Bands) -> tuple[Reading | None, int | None]:
        reading = latest(name)
        if reading is None or reading.value is None:
            return None, None
        return reading, band_score(reading.value, bands)

    add("Respiratory rate", *numeric("respiratory_rate", RESPIRATION))
    spo2 = latest("spo2")
    if spo2 is not None and spo2.value is not None:
        points = (
            spo2_scale_2(spo2.value, on_oxygen=on_oxygen)
            if scale == 2
            else band_score(spo2.value, SPO2_SCALE_1)
        )
        add(f"SpO2 (scale {scale})", spo2, points)
    else:
        add(f"SpO2 (scale {scale})", None, None)
    oxygen_source = next((r for r in (flow, fio2) if r is not None), None)
    if on_oxygen and oxygen_source is not None:
        add("Supplemental oxygen", oxygen_source, OXYGEN_SCORE)
    else:
        parts.append(0)
        inputs.append(
            AlertInput(
                label="Air or oxygen",
                value=("air" if oxygen_source else "no oxygen recorded, scored as air") + " (scores 0)",
                at=oxygen_source.at if oxygen_source else None,
                ref=oxygen_source.ref if oxygen_source else None,
            )
        )
    add("Systolic BP", *numeric("systolic_bp", SYSTOLIC))
    add("Pulse", *numeric("heart_rate", PULSE))
    acvpu = latest("consciousness")
    if acvpu is not None and acvpu.code is not None:
        add("Consciousness", acvpu, consciousness_score(acvpu.code))
    else:
        add("Consciousness", None, None)
    add("Temperature", *numeric("temperature", TEMPERATURE))
    return News2Score(
        aggregate=sum(parts),
        red=any(p == 3 for p in parts),
        missing=tuple(missing),
        inputs=tuple(inputs),
        scale=scale,
    )


def response(aggregate: int, red: bool) -> tuple[Severity, int, str] | None:
    """RCP 2017 clinical risk and response for a score: (severity, band, wording), or None if low."""
    if aggregate >= 7:
        return "critical", 3, "high clinical risk: emergency response"
    if aggregate >= 5:
        return "warning", 2, "medium clinical risk: urgent response"
    if red:
        return "warning", 1, "a single parameter scoring 3: urgent ward-based response"
    return None


def evaluate(state: PatientState, at: datetime, config: News2Config) -> list[Finding]:
    """A NEWS2 finding when the score at ``at`` reaches a response threshold."""
    if state.birth_date is not None and _age(state.birth_date, at) < MIN_AGE_YEARS:
        return []
    result = score(state, at, config)
    if len(result.missing) == PARAMETERS - 1:  # only "air" is known: nothing was measured
        return []
    verdict = response(result.aggregate, result.red)
    if verdict is None:
        return []
    severity, band, wording = verdict
    recorded = PARAMETERS - len(result.missing)
    partial = f" (partial: {recorded} of {PARAMETERS})" if result.missing else ""
    detail = f"NEWS2 aggregate {result.aggregate}{partial}: {wording}."
    if result.missing:
        detail += f" No value in the last {_hours(config.window)} h for: {', '.join(result.missing)}."
    return [
        Finding(
            rule_id=RULE_ID,
            rule_version=RULE_VERSION,
            key=RULE_ID,
            severity=severity,
            level=band,
            summary=f"NEWS2 {result.aggregate}{partial}: {wording}"[:140],
            detail=detail,
            inputs=result.inputs,
            thresholds="single parameter 3 (urgent ward-based), aggregate ≥ 5 (urgent), ≥ 7 (emergency)"
            + (f"; SpO2 scale {result.scale}" if result.scale == 2 else ""),
            citation=CITATION,
            at=newest(result.inputs, at),
        )
    ]


def _hours(window: timedelta) -> str:
    hours = window.total_seconds() / 3600
    return f"{hours:g}"
