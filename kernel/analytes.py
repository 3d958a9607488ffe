"""Vital signs and laboratory analytes the rules read, and how an Observation becomes readings.

Pure functions. An analyte is known by its LOINC codes (plus a deployment's map of local codes,
`CdsSettings.local_codes`) and has one canonical UCUM unit: every value is converted to it here,
before any rule sees it (`kernel.units.convert` for same-dimension units; a molar mass for the
molar ↔ mass conversions pint cannot do, e.g. creatinine µmol/L → mg/dL). A value whose unit
cannot be converted is not read: a rule never compares a number in the wrong unit. The reading
keeps the value as sent (`as_sent`) so an explanation quotes what the clinician saw.

Blood pressure panels (55284-4, 85354-9) carry systolic and diastolic as components; each
component is read as its own analyte.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel, ConfigDict

from kernel.errors import RuleInputError
from kernel.units import convert

LOINC = "http://loinc.org"
# Statuses whose value stands; anything else (registered, cancelled, entered-in-error, unknown)
# is not a result a rule may act on.
USABLE_STATUS = frozenset({"final", "amended", "corrected", "preliminary"})


@dataclass(frozen=True, slots=True)
class Analyte:
    """One measured quantity the rules know."""

    name: str
    label: str
    loinc: frozenset[str]
    unit: str  # canonical UCUM unit; "" for coded values
    molar_mass: Decimal | None = None  # g/mol, for mmol/L ↔ mg/dL
    order_code: str = ""  # the LOINC a repeat test is proposed with (the first one listed)


def _a(name: str, label: str, codes: str, unit: str, molar_mass: str | None = None) -> Analyte:
    listed = codes.split()
    mass = Decimal(molar_mass) if molar_mass else None
    return Analyte(name, label, frozenset(listed), unit, mass, listed[0])


ANALYTES: tuple[Analyte, ...] = (
    # Vital signs (the LOINC codes the NEWS2, qSOFA and SIRS rules read by default).
    _a("respiratory_rate", "Respiratory rate", "9279-1", "/min"),
    _a("spo2", "SpO2", "59408-5 2708-6 2710-2 20564-1", "%"),
    _a("systolic_bp", "Systolic BP", "8480-6", "mm[Hg]"),
    _a("diastolic_bp", "Diastolic BP", "8462-4", "mm[Hg]"),
    _a("heart_rate", "Heart rate", "8867-4", "/min"),
    _a("temperature", "Temperature", "8310-5 8331-1 8332-9 8333-7", "Cel"),
    _a("consciousness", "Level of responsiveness (ACVPU)", "67775-7", ""),
    _a("gcs_total", "Glasgow coma score", "9269-2", "{score}"),
    _a("oxygen_flow", "Inhaled oxygen flow", "3151-8", "L/min"),
    _a("fio2", "Inhaled oxygen concentration (FiO2)", "3150-0", "%"),
    # Laboratory.
    _a("potassium", "Potassium", "2823-3 6298-4", "mmol/L"),
    _a("sodium", "Sodium", "2951-2 2947-0", "mmol/L"),
    _a("glucose", "Glucose", "2345-7 2339-0 41653-7 14749-6 15074-8", "mg/dL", "180.156"),
    _a("hemoglobin", "Haemoglobin", "718-7 20509-6 30313-1", "g/dL"),
    _a("platelets", "Platelets", "777-3 26515-7", "10*3/uL"),
    _a("wbc", "White cell count", "6690-2 26464-8", "10*3/uL"),
    _a("troponin_t_hs", "Troponin T (high-sensitivity)", "67151-1", "ng/L"),
    _a("lactate", "Lactate", "2524-7 32693-4 2518-9", "mmol/L", "90.08"),
    _a("inr", "INR", "6301-6 34714-6 46418-0", "{INR}"),
    _a("creatinine", "Creatinine", "2160-0 38483-4 14682-9", "mg/dL", "113.12"),
    _a("egfr", "eGFR", "33914-3 48642-3 48643-1 62238-1 98979-8", "mL/min/{1.73_m2}"),
    _a("paco2", "PaCO2", "2019-8", "mm[Hg]"),
    # Chronic disease markers (diagnostic and treatment suggestions).
    _a("hba1c", "HbA1c", "4548-4 17856-6 4549-2", "%"),
    _a("fasting_glucose", "Fasting glucose", "1558-6 14771-0", "mg/dL", "180.156"),
    _a("bmi", "Body mass index", "39156-5", "kg/m2"),
    _a("bmi_percentile", "BMI percentile for age and sex", "59576-9", "%"),
    _a("ldl", "LDL cholesterol", "18262-6 13457-7 2089-1", "mg/dL", "386.65"),
    _a("total_cholesterol", "Total cholesterol", "2093-3", "mg/dL", "386.65"),
    _a("hdl", "HDL cholesterol", "2085-9", "mg/dL", "386.65"),
    _a("triglycerides", "Triglycerides", "2571-8 3043-7", "mg/dL", "885.7"),
    _a("tsh", "TSH", "3016-3 11580-8", "m[IU]/L"),
    _a("free_t4", "Free T4", "3024-7", "ng/dL"),
    _a("uacr", "Albumin/creatinine ratio (urine)", "9318-7 14959-1 32294-1", "mg/g"),
)
BY_NAME: Mapping[str, Analyte] = {a.name: a for a in ANALYTES}
_BY_LOINC: Mapping[str, Analyte] = {code: a for a in ANALYTES for code in a.loinc}
# Units written for dimensionless results that UCUM spells several ways.
_DIMENSIONLESS = {"{score}": {"", "{score}", "score", "{total}", "1"}, "{INR}": {"", "{inr}", "inr", "1"}}
_PERCENT = {"%", "percent", "%{oxygen}", "%o2"}
_PER_MICROLITRE_THOUSANDS = {"10*3/ul", "10^3/ul", "x10e3/ul", "10*9/l", "10^9/l", "k/ul", "x10(3)/mcl"}
_MOLAR = {"mmol/l": Decimal(1), "umol/l": Decimal("0.001"), "µmol/l": Decimal("0.001")}
_MASS_PER_DL = {"mg/dl": Decimal(1), "mg/l": Decimal("0.1"), "g/l": Decimal(100)}
# Conversions that are not a change of unit of one quantity: HbA1c IFCC (mmol/mol) to NGSP (%)
# by the IFCC–NGSP master equation; albumin/creatinine mg/mmol to mg/g through creatinine's
# molar mass (113.12 g/mol); TSH µIU/mL is mIU/L.
_SPECIAL: Mapping[tuple[str, str], Callable[[Decimal], Decimal]] = {
    ("hba1c", "mmol/mol"): lambda v: (v * Decimal("0.09148") + Decimal("2.152")).quantize(Decimal("0.1")),
    ("uacr", "mg/mmol"): lambda v: (v * 1000 / Decimal("113.12")).quantize(Decimal("0.1")),
    ("tsh", "uiu/ml"): lambda v: v,
    ("tsh", "µiu/ml"): lambda v: v,
    ("tsh", "miu/l"): lambda v: v,
    ("bmi", "kg/m^2"): lambda v: v,
}


class Reading(BaseModel):
    """One value of one analyte, in the analyte's canonical unit."""

    model_config = ConfigDict(frozen=True)

    analyte: str
    value: Decimal | None = None  # None for coded analytes (consciousness)
    code: str | None = None  # ACVPU letter for consciousness
    at: datetime
    ref: str  # Observation/<id>
    as_sent: str  # "6.2 mmol/L", as the clinician saw it


def analyte_of(codings: list[dict[str, Any]], local_codes: Mapping[str, str] | None = None) -> Analyte | None:
    """The analyte a CodeableConcept's codings name (LOINC, or ``system|code`` in ``local_codes``)."""
    for coding in codings:
        code = str(coding.get("code") or "")
        if coding.get("system") == LOINC and code in _BY_LOINC:
            return _BY_LOINC[code]
        if local_codes:
            name = local_codes.get(f"{coding.get('system', '')}|{code}", "")
            if name in BY_NAME:
                return BY_NAME[name]
    return None


def canonical_value(analyte: Analyte, value: Decimal, unit: str) -> Decimal | None:
    """``value`` (in ``unit``, as sent) in the analyte's canonical unit, or None when unknown."""
    text = unit.strip()
    lowered = text.lower()
    target = analyte.unit
    if lowered == target.lower() or (target in _DIMENSIONLESS and lowered in _DIMENSIONLESS[target]):
        return value
    if target == "%" and lowered in _PERCENT:
        return value
    if target == "10*3/uL" and lowered in _PER_MICROLITRE_THOUSANDS:
        return value  # 10^9/L is numerically 10^3/µL
    if target == "mmol/L" and lowered in ("meq/l", "mmol/l"):
        return value  # monovalent ions (K+, Na+) and lactate: mEq/L = mmol/L
    special = _SPECIAL.get((analyte.name, lowered))
    if special is not None:
        return special(value)
    if analyte.molar_mass is not None:
        converted = _molar_mass_convert(analyte, value, lowered)
        if converted is not None:
            return converted
    if target == "{INR}" or target == "":
        return None
    return convert(value, text, target)


def _molar_mass_convert(analyte: Analyte, value: Decimal, unit: str) -> Decimal | None:
    """mmol/L ↔ mg/dL through the molar mass: mg/dL = mmol/L × g/mol ÷ 10."""
    if analyte.molar_mass is None:
        return None
    target = analyte.unit.lower()
    if target == "mg/dl" and unit in _MOLAR:
        return value * _MOLAR[unit] * analyte.molar_mass / 10
    if target == "mmol/l" and unit in _MASS_PER_DL:
        return value * _MASS_PER_DL[unit] * 10 / analyte.molar_mass
    return None


def _decimal(raw: Any) -> Decimal | None:
    """A quantity's value; a value that is not a number breaks the record contract (validated FHIR)."""
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise RuleInputError("valueQuantity.value is a boolean, not a number")
    try:
        value = Decimal(str(raw))
    except InvalidOperation as exc:
        raise RuleInputError("valueQuantity.value is not a number") from exc
    if not value.is_finite():
        raise RuleInputError("valueQuantity.value is not a finite number")
    return value


_ACVPU_WORDS = (
    ("unresponsive", "U"),
    ("pain", "P"),
    ("voice", "V"),
    ("confus", "C"),
    ("alert", "A"),
)


def acvpu_letter(concept: dict[str, Any] | str | None) -> str | None:
    """A, C, V, P or U from a coded or text level of responsiveness, or None when unreadable."""
    if concept is None:
        return None
    if isinstance(concept, str):
        texts = [concept]
    else:
        texts = [concept.get("text") or ""] + [
            str(c.get("display") or c.get("code") or "") for c in concept.get("coding", [])
        ]
    for text in texts:
        lowered = text.strip().lower()
        if lowered in ("a", "c", "v", "p", "u"):
            return lowered.upper()
        for word, letter in _ACVPU_WORDS:
            if word in lowered:
                return letter
    return None


def _when(obs: dict[str, Any], default: datetime | None) -> datetime | None:
    """Effective time, else issued, else ``default`` (when the message was received).

    A FHIR date without a time (``2019-03-04``) or a dateTime without a zone is read as UTC
    midnight / UTC: it still dates the value for windows and staleness.
    """
    raw = obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or obs.get("issued")
    if not raw:
        return default
    text = str(raw).replace("Z", "+00:00")
    if len(text) in (4, 7):  # FHIR partial dates: year, year-month
        text = text + ("-01-01" if len(text) == 4 else "-01")
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise RuleInputError("Observation effective time is not a FHIR dateTime") from exc
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _value_reading(analyte: Analyte, holder: dict[str, Any], at: datetime, ref: str) -> Reading | None:
    if analyte.name == "consciousness":
        letter = acvpu_letter(holder.get("valueCodeableConcept") or holder.get("valueString"))
        if letter is None:
            return None
        return Reading(analyte=analyte.name, code=letter, at=at, ref=ref, as_sent=f"ACVPU {letter}")
    q = holder.get("valueQuantity")
    if not q or q.get("comparator"):  # "<0.01" is a bound, not a value a threshold can use
        return None
    value = _decimal(q.get("value"))
    if value is None:
        return None
    unit = str(q.get("code") or q.get("unit") or "")
    canonical = canonical_value(analyte, value, unit)
    if canonical is None:
        return None
    shown = str(q.get("unit") or q.get("code") or "").strip()
    return Reading(analyte=analyte.name, value=canonical, at=at, ref=ref, as_sent=f"{value} {shown}".strip())


def readings_of(
    obs: dict[str, Any],
    local_codes: Mapping[str, str] | None = None,
    *,
    received_at: datetime | None = None,
) -> list[Reading]:
    """The readings in one Observation (its value and its components); [] if none is usable.

    Raises:
        RuleInputError: the Observation breaks the record contract (no id, a value or time that
            validated FHIR cannot hold), so the record is dead-lettered rather than skipped.
    """
    if obs.get("resourceType") != "Observation" or obs.get("status") not in USABLE_STATUS:
        return []
    if not obs.get("id"):
        raise RuleInputError("Observation without an id")
    at = _when(obs, received_at)
    if at is None:
        return []
    ref = f"Observation/{obs['id']}"
    out: list[Reading] = []
    analyte = analyte_of(obs.get("code", {}).get("coding", []), local_codes)
    if analyte is not None:
        reading = _value_reading(analyte, obs, at, ref)
        if reading is not None:
            out.append(reading)
    for component in obs.get("component", []):
        part = analyte_of(component.get("code", {}).get("coding", []), local_codes)
        if part is not None:
            reading = _value_reading(part, component, at, ref)
            if reading is not None:
                out.append(reading)
    return out
