"""Acute kidney injury by the serum creatinine criteria of KDIGO (2012).

Pure functions. A new creatinine result meets the definition when it is ≥ 0.3 mg/dL
(26.5 µmol/L) above a value in the previous 48 hours, or ≥ 1.5 × the baseline, taken as the
lowest value in the previous 7 days (the "known or presumed to have occurred within the prior
7 days" of the guideline, as commonly operationalised). Stage (KDIGO table 2): 3 at ≥ 3.0 ×
baseline or creatinine ≥ 4.0 mg/dL (353.6 µmol/L), 2 at 2.0–2.9 ×, otherwise 1. Urine output
and renal replacement therapy are not read, so a stage can be underestimated, never invented.
Creatinine in µmol/L is converted to mg/dL before comparison (`kernel.analytes`).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from inference.cds.findings import Finding, input_of
from inference.cds.state import PatientState
from kernel.analytes import Reading
from kernel.events import Severity

RULE_ID = "aki-kdigo"
RULE_VERSION = "1.0.0"
CITATION = (
    "Kidney Disease: Improving Global Outcomes (KDIGO) Acute Kidney Injury Work Group. KDIGO Clinical "
    "Practice Guideline for Acute Kidney Injury. Kidney Int Suppl 2012;2:1-138 (section 2.1, table 2)."
)
ABSOLUTE_RISE = Decimal("0.3")  # mg/dL within 48 h
RELATIVE_RISE = Decimal("1.5")  # × baseline within 7 days
STAGE_2, STAGE_3 = Decimal("2.0"), Decimal("3.0")
STAGE_3_ABSOLUTE = Decimal("4.0")  # mg/dL
SHORT_WINDOW = timedelta(hours=48)
BASELINE_WINDOW = timedelta(days=7)
_SEVERITY: dict[int, Severity] = {1: "warning", 2: "warning", 3: "critical"}


def stage(current: Decimal, baseline: Decimal, *, rise_48h: bool) -> int:
    """KDIGO stage (0: no AKI) for ``current`` against the 7-day ``baseline``."""
    ratio = current / baseline if baseline > 0 else Decimal(0)
    if ratio < RELATIVE_RISE and not rise_48h:
        return 0
    if ratio >= STAGE_3 or current >= STAGE_3_ABSOLUTE:
        return 3
    if ratio >= STAGE_2:
        return 2
    return 1


def _assess(state: PatientState, reading: Reading) -> Finding | None:
    current = reading.value
    if current is None:
        return None
    before = [
        (r.value, r)
        for r in state.series("creatinine", at=reading.at, window=BASELINE_WINDOW)
        if r.at < reading.at and r.value is not None and r.value > 0
    ]
    if not before:
        return None
    base_value, baseline = min(before, key=lambda p: (p[0], p[1].at))
    recent = [p for p in before if p[1].at >= reading.at - SHORT_WINDOW]
    low_48h = min(recent, key=lambda p: (p[0], p[1].at)) if recent else None
    rise_48h = low_48h is not None and current - low_48h[0] >= ABSOLUTE_RISE
    result = stage(current, base_value, rise_48h=rise_48h)
    if result == 0:
        return None
    ratio = current / base_value
    reasons = []
    if rise_48h and low_48h is not None:
        reasons.append(f"a rise of {current - low_48h[0]:.2f} mg/dL within 48 h")
    if ratio >= RELATIVE_RISE:
        reasons.append(f"{ratio:.1f} × the 7-day baseline")
    inputs = [input_of("Creatinine (now)", reading), input_of("Creatinine (7-day baseline)", baseline)]
    if rise_48h and low_48h is not None and low_48h[1].ref != baseline.ref:
        inputs.append(input_of("Creatinine (48 h low)", low_48h[1]))
    return Finding(
        rule_id=RULE_ID,
        rule_version=RULE_VERSION,
        key=RULE_ID,
        severity=_SEVERITY[result],
        level=result,
        summary=f"Acute kidney injury, KDIGO stage {result}: creatinine {reading.as_sent}"[:140],
        detail=f"Creatinine {reading.as_sent} at {reading.at.isoformat()}: "
        + " and ".join(reasons)
        + f" (baseline {baseline.as_sent} at {baseline.at.isoformat()}). Urine output not assessed. "
        "Review nephrotoxic drugs and doses, volume status and urine output.",
        inputs=tuple(inputs),
        thresholds="rise ≥ 0.3 mg/dL within 48 h or ≥ 1.5 × 7-day baseline; stage 2 ≥ 2.0 ×, "
        "stage 3 ≥ 3.0 × or ≥ 4.0 mg/dL",
        citation=CITATION,
        at=reading.at,
    )


def evaluate(state: PatientState, changed: frozenset[str]) -> list[Finding]:
    """A finding for each new creatinine result in ``changed`` that meets the KDIGO definition."""
    findings = []
    for reading in state.readings.get("creatinine", []):
        if reading.ref in changed:
            finding = _assess(state, reading)
            if finding is not None:
                findings.append(finding)
    return findings
