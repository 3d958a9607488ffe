"""Critical laboratory values: a new result at or beyond its analyte's critical limit.

Pure functions. Limits are in each analyte's canonical unit (`kernel.analytes`), so a
result sent in another unit (glucose in mmol/L, creatinine in µmol/L) is compared after
conversion, and one in a unit that cannot be converted is never compared. Critical limits are
set by each laboratory's policy (CLSI GP47); the defaults below sit within the ranges of the
published surveys and are configurable per analyte (`CLINSTREAM_CDS__CRITICAL_LIMITS`). Only
results carried by the record being processed are evaluated: a value already in the patient's
state alerted (or did not) when it arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from inference.cds.errors import RuleConfigError
from inference.cds.findings import Finding, input_of
from inference.cds.state import PatientState
from kernel.analytes import BY_NAME, Reading

RULE_ID = "critical-lab"
RULE_VERSION = "2.0.0"
CITATION = (
    "Critical limits are set by local laboratory policy (CLSI GP47, Management of Critical- and "
    "Significant-Risk Laboratory Results, 2015). Defaults within the ranges surveyed by Kost GJ, "
    "JAMA 1990;263(5):704-707 and Wagar EA et al., Arch Pathol Lab Med 2007;131(1):44-49; lactate "
    "≥ 4 mmol/L per the Surviving Sepsis Campaign (Evans L et al., Crit Care Med 2021;49(11):e1063); "
    "hs-troponin T ≥ 52 ng/L per the ESC 0 h rule-in (Collet JP et al., Eur Heart J 2021;42(14):1289)."
)


@dataclass(frozen=True, slots=True)
class CriticalLimit:
    """At or below ``low``, or at or above ``high`` (canonical unit), is critical."""

    low: Decimal | None = None
    high: Decimal | None = None


def _limit(low: str | None, high: str | None) -> CriticalLimit:
    return CriticalLimit(Decimal(low) if low else None, Decimal(high) if high else None)


DEFAULT_LIMITS: Mapping[str, CriticalLimit] = {
    "potassium": _limit("2.5", "6.0"),  # mmol/L
    "sodium": _limit("120", "160"),  # mmol/L
    "glucose": _limit("40", "500"),  # mg/dL
    "hemoglobin": _limit("7.0", None),  # g/dL
    "platelets": _limit("20", "1000"),  # 10*3/uL
    "troponin_t_hs": _limit(None, "52"),  # ng/L
    "lactate": _limit(None, "4.0"),  # mmol/L
    "inr": _limit(None, "5.0"),
}


def _crossed(reading: Reading, limit: CriticalLimit) -> str | None:
    value = reading.value
    if value is None:
        return None
    if limit.high is not None and value >= limit.high:
        return "high"
    if limit.low is not None and value <= limit.low:
        return "low"
    return None


def evaluate(
    state: PatientState, changed: frozenset[str], limits: Mapping[str, CriticalLimit]
) -> list[Finding]:
    """A finding per result in ``changed`` (resource refs of the record) at or beyond its limit."""
    findings: list[Finding] = []
    for name, limit in limits.items():
        for reading in state.readings.get(name, []):
            if reading.ref not in changed:
                continue
            side = _crossed(reading, limit)
            if side is None:
                continue
            analyte = BY_NAME[name]
            bound = limit.high if side == "high" else limit.low
            sign = "≥" if side == "high" else "≤"
            unit = analyte.unit.replace("{INR}", "").replace("10*3/uL", "× 10³/µL")
            findings.append(
                Finding(
                    rule_id=RULE_ID,
                    rule_version=RULE_VERSION,
                    key=f"{RULE_ID}/{name}/{side}",
                    severity="critical",
                    level=1,
                    summary=f"Critical {side} {analyte.label.lower()}: {reading.as_sent}"[:140],
                    detail=f"{analyte.label} {reading.as_sent} at {reading.at.isoformat()} is {sign} the "
                    f"critical limit of {bound} {unit}".rstrip()
                    + ". Confirm the result (specimen quality, repeat) and act per local protocol.",
                    inputs=(input_of(analyte.label, reading),),
                    thresholds=f"{analyte.label} {sign} {bound} {unit}".rstrip(),
                    citation=CITATION,
                    at=reading.at,
                )
            )
    return findings


def limits_with(
    overrides: Mapping[str, Mapping[str, float | None]] | None = None,
) -> dict[str, CriticalLimit]:
    """The default limits with a deployment's overrides (``{"potassium": {"high": 6.2}}``)."""
    limits = dict(DEFAULT_LIMITS)
    for name, bounds in (overrides or {}).items():
        if name not in BY_NAME:
            raise RuleConfigError(f"unknown analyte {name!r} in critical limits")
        base = limits.get(name, CriticalLimit())
        low = bounds["low"] if "low" in bounds else base.low
        high = bounds["high"] if "high" in bounds else base.high
        limits[name] = CriticalLimit(
            Decimal(str(low)) if low is not None else None, Decimal(str(high)) if high is not None else None
        )
    return limits
