"""Sepsis screening: qSOFA (Sepsis-3) and SIRS (ACCP/SCCM 1992).

Pure functions over the patient's most recent values within the vital-signs window.
qSOFA counts respiratory rate ≥ 22/min, altered mentation (GCS < 15, or a level of
responsiveness other than Alert) and systolic BP ≤ 100 mmHg; 2 or more is positive (Seymour
et al. 2016, adopted by Sepsis-3). SIRS counts temperature > 38 °C or < 36 °C, heart rate
> 90/min, respiratory rate > 20/min or PaCO2 < 32 mmHg, white cells > 12 or < 4 × 10⁹/L; 2 or
more meets SIRS (Bone et al. 1992). Band forms (> 10 % immature neutrophils) are not read.
SIRS is sensitive and unspecific, so it is raised as information; a positive qSOFA as a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from inference.cds.findings import Finding, input_of, newest
from inference.cds.state import PatientState
from kernel.analytes import Reading
from kernel.events import AlertInput

QSOFA_ID = "sepsis-qsofa"
SIRS_ID = "sepsis-sirs"
RULE_VERSION = "1.0.0"
QSOFA_CITATION = (
    "Seymour CW et al. Assessment of clinical criteria for sepsis (Sepsis-3). JAMA 2016;315(8):762-774; "
    "Singer M et al. The Third International Consensus Definitions for Sepsis and Septic Shock "
    "(Sepsis-3). JAMA 2016;315(8):801-810."
)
SIRS_CITATION = (
    "Bone RC et al. Definitions for sepsis and organ failure and guidelines for the use of innovative "
    "therapies in sepsis. ACCP/SCCM Consensus Conference Committee. Chest 1992;101(6):1644-1655."
)
QSOFA_RR = Decimal(22)
QSOFA_SBP = Decimal(100)
GCS_NORMAL = Decimal(15)
SIRS_TEMP_HIGH, SIRS_TEMP_LOW = Decimal(38), Decimal(36)
SIRS_HR = Decimal(90)
SIRS_RR = Decimal(20)
SIRS_PACO2 = Decimal(32)
SIRS_WBC_HIGH, SIRS_WBC_LOW = Decimal(12), Decimal(4)
POSITIVE = 2


def _criteria(
    state: PatientState,
    at: datetime,
    window: timedelta,
    tests: list[tuple[str, str, Callable[[Reading], bool]]],
) -> list[AlertInput]:
    """The criteria met by the latest values in the window, one input per criterion."""
    met: dict[str, AlertInput] = {}
    for criterion, analyte, test in tests:
        reading = state.latest(analyte, at=at, window=window)
        if reading is not None and criterion not in met and test(reading):
            met[criterion] = input_of(criterion, reading, "meets")
    return list(met.values())


def _num(predicate: Callable[[Decimal], bool]) -> Callable[[Reading], bool]:
    return lambda r: r.value is not None and predicate(r.value)


def qsofa(state: PatientState, at: datetime, window: timedelta) -> list[Finding]:
    """A qSOFA finding when 2 or more of its 3 criteria are met."""
    met = _criteria(
        state,
        at,
        window,
        [
            ("Respiratory rate ≥ 22/min", "respiratory_rate", _num(lambda v: v >= QSOFA_RR)),
            ("Altered mentation", "gcs_total", _num(lambda v: v < GCS_NORMAL)),
            ("Altered mentation", "consciousness", lambda r: r.code not in (None, "A")),
            ("Systolic BP ≤ 100 mmHg", "systolic_bp", _num(lambda v: v <= QSOFA_SBP)),
        ],
    )
    if len(met) < POSITIVE:
        return []
    names = ", ".join(i.label.lower() for i in met)
    return [
        Finding(
            rule_id=QSOFA_ID,
            rule_version=RULE_VERSION,
            key=QSOFA_ID,
            severity="warning",
            level=len(met),
            summary=f"qSOFA {len(met)}: possible sepsis, assess for infection and organ dysfunction",
            detail=f"qSOFA {len(met)} of 3 ({names}). A positive qSOFA (≥ 2) outside the ICU identifies "
            "patients with suspected infection at greater risk of a poor outcome (Sepsis-3).",
            inputs=tuple(met),
            thresholds="RR ≥ 22/min, GCS < 15 or not Alert, systolic BP ≤ 100 mmHg; positive at ≥ 2",
            citation=QSOFA_CITATION,
            at=newest(tuple(met), at),
        )
    ]


def sirs(state: PatientState, at: datetime, window: timedelta) -> list[Finding]:
    """A SIRS finding when 2 or more of its 4 criteria are met."""
    met = _criteria(
        state,
        at,
        window,
        [
            (
                "Temperature > 38 °C or < 36 °C",
                "temperature",
                _num(lambda v: v > SIRS_TEMP_HIGH or v < SIRS_TEMP_LOW),
            ),
            ("Heart rate > 90/min", "heart_rate", _num(lambda v: v > SIRS_HR)),
            ("Respiratory rate > 20/min or PaCO2 < 32 mmHg", "respiratory_rate", _num(lambda v: v > SIRS_RR)),
            ("Respiratory rate > 20/min or PaCO2 < 32 mmHg", "paco2", _num(lambda v: v < SIRS_PACO2)),
            (
                "White cells > 12 or < 4 × 10⁹/L",
                "wbc",
                _num(lambda v: v > SIRS_WBC_HIGH or v < SIRS_WBC_LOW),
            ),
        ],
    )
    if len(met) < POSITIVE:
        return []
    return [
        Finding(
            rule_id=SIRS_ID,
            rule_version=RULE_VERSION,
            key=SIRS_ID,
            severity="info",
            level=len(met),
            summary=f"SIRS criteria met ({len(met)} of 4)",
            detail=f"{len(met)} of 4 SIRS criteria: " + "; ".join(i.label for i in met) + ".",
            inputs=tuple(met),
            thresholds="temperature > 38 or < 36 °C, HR > 90/min, RR > 20/min or PaCO2 < 32 mmHg, "
            "WBC > 12 or < 4 × 10⁹/L; met at ≥ 2",
            citation=SIRS_CITATION,
            at=newest(tuple(met), at),
        )
    ]
