"""Local observation codes: which ones decision support does not know, what they probably are,
and the versioned mappings a person confirms. Pure functions.

**Sightings.** An Observation none of whose codings is LOINC, and whose code is not mapped, is
invisible to the rules. `sightings_in` lists those of a record per sending system (the
envelope's ``source_system``: an HL7 ``APP^FACILITY`` or a FHIR client), with the units the
values came in and their range; `merge` adds sightings up. A local code means something only
to the system that sent it (``L`` is every lab's "local"), so codes are kept per sender.

**Suggestions.** `suggest` ranks LOINC candidates for a sighting from three kinds of evidence:
its name (the code and display, with the usual laboratory abbreviations spelled out), its units
(convertible to the candidate's: `kernel.analytes.canonical_value` for the analytes the rules
read, the traditional and SI units of the `labunits` reference table otherwise) and, for the
analytes the rules read, whether the values seen are physiologically possible in that unit.
The candidates are the rules' analytes and the 133 analytes `labunits` ships with their LOINC
codes. A suggestion is for a person to confirm; nothing is mapped by itself.

**Mappings.** `confirm` makes the next version of a code's mapping: who confirmed it, when,
the LOINC code and the analyte the rules read it as, and every earlier version. `LocalCodes`
answers, per sender, the ``system|code → analyte`` table the rules take: the sender's own
confirmed mappings, then those confirmed for every sender (``*``), then the deployment's static
`CdsSettings.local_codes` (a confirmed mapping is newer than the configuration).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kernel.analytes import ANALYTES, BY_NAME, LOINC, Analyte, analyte_of, canonical_value
from kernel.events import FhirRecord
from kernel.units import convert

MIN_SCORE = 0.5
"""Below it a candidate shares a word with the code and little else: not worth a person's time."""
ANY_SENDER = "*"
"""A mapping confirmed for every sender (a code system with a global meaning)."""
LOINC_CODE = re.compile(r"^\d{1,7}-\d$")

# Laboratory shorthand as local code lists write it (word → the words it stands for).
ABBREVIATIONS: Mapping[str, str] = {
    "k": "potassium",
    "kplus": "potassium",
    "na": "sodium",
    "cl": "chloride",
    "glu": "glucose",
    "gluc": "glucose",
    "bg": "glucose",
    "fbg": "fasting glucose",
    "fbs": "fasting glucose",
    "creat": "creatinine",
    "cre": "creatinine",
    "crea": "creatinine",
    "cr": "creatinine",
    "scr": "creatinine",
    "bun": "urea nitrogen",
    "urea": "urea nitrogen",
    "hgb": "haemoglobin hemoglobin",
    "hb": "haemoglobin hemoglobin",
    "plt": "platelets",
    "plat": "platelets",
    "wbc": "white cell count",
    "wcc": "white cell count",
    "lac": "lactate",
    "lact": "lactate",
    "inr": "inr",
    "ptinr": "inr",
    "tnt": "troponin t",
    "hstnt": "troponin t high sensitivity",
    "tni": "troponin i",
    "egfr": "egfr",
    "gfr": "egfr",
    "a1c": "hba1c",
    "hba1c": "hba1c glycated hemoglobin",
    "ldl": "ldl cholesterol",
    "hdl": "hdl cholesterol",
    "chol": "total cholesterol",
    "tchol": "total cholesterol",
    "trig": "triglycerides",
    "tg": "triglycerides",
    "tsh": "tsh",
    "ft4": "free t4",
    "alt": "alanine aminotransferase",
    "sgpt": "alanine aminotransferase",
    "ast": "aspartate aminotransferase",
    "sgot": "aspartate aminotransferase",
    "alp": "alkaline phosphatase",
    "alkphos": "alkaline phosphatase",
    "ck": "creatine kinase",
    "cpk": "creatine kinase",
    "ldh": "lactate dehydrogenase",
    "mg": "magnesium",
    "ca": "calcium",
    "ica": "calcium ionized",
    "hco3": "bicarbonate",
    "co2": "carbon dioxide bicarbonate",
    "alb": "albumin",
    "tp": "total protein",
    "rr": "respiratory rate",
    "resp": "respiratory rate",
    "hr": "heart rate",
    "pulse": "heart rate",
    "sbp": "systolic bp",
    "dbp": "diastolic bp",
    "spo2": "spo2",
    "sat": "spo2",
    "temp": "temperature",
    "fio2": "fio2",
    "pco2": "paco2",
    "paco2": "paco2",
    "uacr": "albumin creatinine ratio urine",
    "acr": "albumin creatinine ratio urine",
    "bmi": "body mass index",
}
# Words that say nothing about which analyte: specimens, methods, qualifiers.
_STOP = frozenset(
    "serum plasma blood bld ser plas level lvl test result value total tot s p b whole venous "
    "arterial art ven poc point care of in by the and a an mass moles volume concentration conc "
    "cardiac measured actual most current".split()
)
_WORD = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z][a-z])")

# Common results that neither the rules nor `labunits` list (LOINC, name, UCUM units).
MORE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("29463-7", "Body weight", ("kg", "[lb_av]")),
    ("8302-2", "Body height", ("cm", "[in_i]")),
    ("2885-2", "Protein, total", ("g/dL", "g/L")),
    ("17861-6", "Calcium", ("mg/dL", "mmol/L")),
    ("2777-1", "Phosphate", ("mg/dL", "mmol/L")),
    ("1975-2", "Bilirubin, total", ("mg/dL", "umol/L")),
    ("3084-1", "Urate", ("mg/dL", "umol/L")),
)

# What a value of each analyte the rules read can possibly be, in its canonical unit: a value
# outside says the code is something else (or in another unit).
POSSIBLE: Mapping[str, tuple[Decimal, Decimal]] = {
    name: (Decimal(low), Decimal(high))
    for name, (low, high) in {
        "respiratory_rate": ("1", "80"),
        "spo2": ("30", "100"),
        "systolic_bp": ("30", "300"),
        "diastolic_bp": ("10", "200"),
        "heart_rate": ("15", "300"),
        "temperature": ("25", "45"),
        "gcs_total": ("3", "15"),
        "oxygen_flow": ("0", "70"),
        "fio2": ("21", "100"),
        "potassium": ("1", "12"),
        "sodium": ("90", "200"),
        "glucose": ("5", "2000"),
        "hemoglobin": ("1", "26"),
        "platelets": ("1", "3000"),
        "wbc": ("0.05", "500"),
        "troponin_t_hs": ("0", "100000"),
        "lactate": ("0.1", "35"),
        "inr": ("0.5", "20"),
        "creatinine": ("0.05", "40"),
        "egfr": ("1", "200"),
        "paco2": ("5", "200"),
        "hba1c": ("3", "25"),
        "fasting_glucose": ("5", "2000"),
        "bmi": ("8", "120"),
        "bmi_percentile": ("0", "100"),
        "ldl": ("5", "1000"),
        "total_cholesterol": ("20", "2000"),
        "hdl": ("2", "300"),
        "triglycerides": ("5", "20000"),
        "tsh": ("0.001", "1000"),
        "free_t4": ("0.01", "30"),
        "uacr": ("0", "50000"),
    }.items()
}


class Sighting(BaseModel):
    """An unknown observation code as one sender used it: how often, in which units, what range."""

    model_config = ConfigDict(frozen=True)

    sender: str
    system: str = ""
    code: str
    display: str = ""
    count: int = 0
    units: dict[str, int] = Field(default_factory=dict, description="Unit as sent → how many values.")
    low: Decimal | None = None
    high: Decimal | None = None
    unit_of_range: str = Field(default="", description="The unit low and high are in (the most used one).")
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    @property
    def key(self) -> str:
        """``sender|system|code`` as one string (`code_key`)."""
        return code_key(self.sender, self.system, self.code)


def code_key(sender: str, system: str, code: str) -> str:
    """One string naming a sender's code (JSON, so no character of a part is ambiguous)."""
    return json.dumps([sender, system, code], separators=(",", ":"))


def split_key(key: str) -> tuple[str, str, str]:
    """The parts `code_key` joined."""
    sender, system, code = json.loads(key)
    return str(sender), str(system), str(code)


def sightings_in(record: FhirRecord, local_codes: Mapping[str, str]) -> list[Sighting]:
    """The Observations of ``record`` whose codes the rules do not know (no LOINC coding, not in
    ``local_codes``), one sighting per code, values and units counted."""
    found: list[Sighting] = []
    sender = record.envelope.source_system
    for resource in record.resources:
        if resource.get("resourceType") != "Observation":
            continue
        codings = [c for c in (resource.get("code") or {}).get("coding") or [] if isinstance(c, dict)]
        if not codings or any(c.get("system") == LOINC for c in codings):
            continue
        if analyte_of(codings, local_codes) is not None:
            continue
        coding = next((c for c in codings if c.get("code")), None)
        if coding is None:
            continue
        found.append(_sighting(sender, coding, resource, record.envelope.received_at))
    return list(summed(found).values())


def summed(sightings: Iterable[Sighting]) -> dict[str, Sighting]:
    """Sightings of the same code merged into one, by `Sighting.key`, in first-seen order."""
    found: dict[str, Sighting] = {}
    for one in sightings:
        found[one.key] = merge(found[one.key], one) if one.key in found else one
    return found


def _sighting(sender: str, coding: dict[str, Any], obs: dict[str, Any], seen: datetime) -> Sighting:
    quantity = obs.get("valueQuantity") or {}
    value = _decimal(quantity.get("value"))
    unit = str(quantity.get("unit") or quantity.get("code") or "").strip()
    display = str(coding.get("display") or (obs.get("code") or {}).get("text") or "")
    return Sighting(
        sender=sender,
        system=str(coding.get("system") or ""),
        code=str(coding["code"]),
        display=display,
        count=1,
        units={unit: 1} if value is not None else {},
        low=value,
        high=value,
        unit_of_range=unit if value is not None else "",
        first_seen=seen,
        last_seen=seen,
    )


def merge(a: Sighting, b: Sighting) -> Sighting:
    """Both sightings of one code as one (counts added, the range of the most used unit)."""
    units = dict(a.units)
    for unit, n in b.units.items():
        units[unit] = units.get(unit, 0) + n
    main = max(units, key=lambda u: (units[u], u)) if units else ""
    values = [v for s in (a, b) if s.unit_of_range == main for v in (s.low, s.high) if v is not None]
    return Sighting(
        sender=a.sender,
        system=a.system,
        code=a.code,
        display=a.display or b.display,
        count=a.count + b.count,
        units=units,
        low=min(values) if values else None,
        high=max(values) if values else None,
        unit_of_range=main if values else "",
        first_seen=min((t for t in (a.first_seen, b.first_seen) if t), default=None),
        last_seen=max((t for t in (a.last_seen, b.last_seen) if t), default=None),
    )


def _decimal(raw: Any) -> Decimal | None:
    if raw is None or isinstance(raw, bool):
        return None
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


@dataclass(frozen=True)
class Candidate:
    """A LOINC code a local code may be: its name's words, its units, the rules' analyte."""

    loinc: str
    label: str
    words: frozenset[str]
    units: tuple[str, ...]
    analyte: Analyte | None


class Suggestion(BaseModel):
    """A LOINC code proposed for a local code, with why."""

    model_config = ConfigDict(frozen=True)

    loinc: str
    label: str
    analyte: str | None = Field(description="The analyte the rules read it as; None: no rule reads it.")
    score: float
    reasons: list[str]


def words_of(text: str) -> frozenset[str]:
    """The meaningful words of a code or name, abbreviations spelled out."""
    found: set[str] = set()
    lowered = _CAMEL.sub(" ", text).lower().replace("µ", "u")  # "TotalProtein": two words
    for word in _WORD.findall(lowered):
        found.update(ABBREVIATIONS.get(word, word).split())
    squashed = re.sub(r"[^a-z0-9]", "", lowered)  # "K+", "Hb-A1c", "HRTRTMON" as one word
    if squashed in ABBREVIATIONS:
        found.update(ABBREVIATIONS[squashed].split())
    return frozenset(w for w in found if w not in _STOP and not w.isdigit())


@cache
def candidates() -> tuple[Candidate, ...]:
    """The rules' analytes, a few common results (`MORE`), then the `labunits` reference
    analytes (one candidate per LOINC)."""
    from labunits.converters import analytes as reference

    found: dict[str, Candidate] = {}
    for a in ANALYTES:
        found[a.order_code] = Candidate(a.order_code, a.label, words_of(f"{a.label} {a.name}"), (a.unit,), a)
    for loinc, label, units in MORE:
        found[loinc] = Candidate(loinc, label, words_of(label), units, None)
    for ref in reference():
        if ref.loinc_num in found:
            continue
        units = tuple(u for u in (ref.traditional_unit, ref.si_unit) if u and "fraction" not in u.lower())
        analyte = _rules_analyte(ref.loinc_num)
        found[ref.loinc_num] = Candidate(ref.loinc_num, ref.name, words_of(ref.name), units, analyte)
    return tuple(found.values())


def _rules_analyte(loinc: str) -> Analyte | None:
    """The analyte the rules read a LOINC code as, if any."""
    return analyte_of([{"system": LOINC, "code": loinc}])


def suggest(sighting: Sighting, limit: int = 3) -> list[Suggestion]:
    """The likeliest LOINC codes for ``sighting``, best first; none when no name matches."""
    said = words_of(f"{sighting.code} {sighting.display}")
    ranked: list[Suggestion] = []
    for cand in candidates():
        shared = said & cand.words
        if cand.loinc == sighting.code:  # a LOINC code sent under a local system
            score, reasons = 2.0, [f"the code is LOINC {cand.loinc}"]
        elif shared:
            score = len(shared) / len(said | cand.words) + len(shared) / len(cand.words)
            reasons = [f"name: {', '.join(sorted(shared))}"]
        else:
            continue
        unit_score, unit_reason = _units(sighting, cand)
        score += unit_score
        if unit_reason:
            reasons.append(unit_reason)
        range_score, range_reason = _range(sighting, cand)
        score += range_score
        if range_reason:
            reasons.append(range_reason)
        ranked.append(
            Suggestion(
                loinc=cand.loinc,
                label=cand.label,
                analyte=cand.analyte.name if cand.analyte else None,
                score=round(score, 3),
                reasons=reasons,
            )
        )
    ranked.sort(key=lambda s: (-s.score, s.analyte is None, s.loinc))
    return [s for s in ranked if s.score >= MIN_SCORE][:limit]


def _units(sighting: Sighting, cand: Candidate) -> tuple[float, str]:
    """+1 when a unit the values came in converts to the candidate's, -1 when none does."""
    sent = [u for u in sighting.units if u]
    if not sent:
        return 0.0, ""
    for unit in sent:
        if _converts(unit, cand):
            return 1.0, f"unit {unit} fits"
    return -1.0, f"unit {sent[0]} does not fit {cand.units[0] if cand.units else 'a coded value'}"


def _converts(unit: str, cand: Candidate) -> bool:
    if cand.analyte is not None:
        return canonical_value(cand.analyte, Decimal(1), unit) is not None
    return any(convert(1, unit, target) is not None for target in cand.units)


def _range(sighting: Sighting, cand: Candidate) -> tuple[float, str]:
    """+0.5 when every value seen is possible for the analyte, -1 when one is not."""
    if cand.analyte is None or sighting.low is None or sighting.high is None:
        return 0.0, ""
    bounds = POSSIBLE.get(cand.analyte.name)
    if bounds is None:
        return 0.0, ""
    values = [canonical_value(cand.analyte, v, sighting.unit_of_range) for v in (sighting.low, sighting.high)]
    if any(v is None for v in values):
        return 0.0, ""
    low, high = bounds
    if all(v is not None and low <= v <= high for v in values):
        return 0.5, f"values {sighting.low}–{sighting.high} possible"
    return -1.0, f"values {sighting.low}–{sighting.high} impossible for {cand.label}"


class Version(BaseModel):
    """One version of a code's mapping."""

    model_config = ConfigDict(frozen=True)

    version: int
    loinc: str
    analyte: str | None
    by: str
    at: datetime
    on_behalf_of: str = Field(
        default="", description="The person a service confirmed it for (the dashboard's user)."
    )


class CodeMapping(BaseModel):
    """A sender's local code mapped to LOINC (and the analyte the rules read), with its history."""

    model_config = ConfigDict(frozen=True)

    sender: str = Field(description="The sending system, or * for every sender.")
    system: str = ""
    code: str
    display: str = ""
    current: Version
    history: list[Version] = Field(default_factory=list, description="Earlier versions, oldest first.")

    @property
    def key(self) -> str:
        """``sender|system|code`` (`code_key`)."""
        return code_key(self.sender, self.system, self.code)


class MappingError(ValueError):
    """A mapping that cannot be confirmed (the message says why; it names no patient)."""


def confirm(
    previous: CodeMapping | None,
    *,
    sender: str,
    system: str,
    code: str,
    loinc: str,
    by: str,
    at: datetime,
    analyte: str | None = None,
    display: str = "",
    on_behalf_of: str = "",
) -> CodeMapping:
    """The next version of a code's mapping.

    Raises:
        MappingError: a LOINC code that is not one, or an analyte the rules do not have, or
            one that the LOINC code does not name.
    """
    if not LOINC_CODE.match(loinc):
        raise MappingError("loinc must be a LOINC code such as 2823-3")
    if not code or not sender:
        raise MappingError("sender and code are required")
    named = _rules_analyte(loinc)
    if analyte is not None and analyte not in BY_NAME:
        raise MappingError(f"unknown analyte {analyte!r}")
    if analyte is not None and named is not None and named.name != analyte:
        raise MappingError(f"LOINC {loinc} is {named.name}, not {analyte}")
    chosen = analyte or (named.name if named else None)
    number = previous.current.version + 1 if previous else 1
    history = [*previous.history, previous.current] if previous else []
    return CodeMapping(
        sender=sender,
        system=system,
        code=code,
        display=display or (previous.display if previous else ""),
        current=Version(version=number, loinc=loinc, analyte=chosen, by=by, at=at, on_behalf_of=on_behalf_of),
        history=history,
    )


def loinc_coding(mapping: CodeMapping) -> dict[str, Any]:
    """The LOINC coding a mapped Observation gets when its history is re-run."""
    named = _rules_analyte(mapping.current.loinc)
    label = named.label if named else ""
    coding: dict[str, Any] = {"system": LOINC, "code": mapping.current.loinc, "userSelected": False}
    if label:
        coding["display"] = label
    return coding


def with_mapping(record: FhirRecord, mapping: CodeMapping) -> FhirRecord | None:
    """``record`` with the LOINC coding added to each Observation coded with ``mapping``'s code
    (None when it has none): the record a re-run sends through decision support again."""
    if mapping.sender not in (ANY_SENDER, record.envelope.source_system):
        return None
    touched = False
    resources = []
    for resource in record.resources:
        codings = (resource.get("code") or {}).get("coding") or []
        hit = resource.get("resourceType") == "Observation" and any(
            isinstance(c, dict)
            and c.get("code") == mapping.code
            and str(c.get("system") or "") == mapping.system
            for c in codings
        )
        if hit and not any(isinstance(c, dict) and c.get("system") == LOINC for c in codings):
            resource = {**resource, "code": {**resource["code"], "coding": [*codings, loinc_coding(mapping)]}}
            touched = True
        resources.append(resource)
    if not touched:
        return None
    lane = record.envelope.model_copy(update={"lane": "backfill"})
    return record.model_copy(update={"resources": resources, "envelope": lane})


class LocalCodes:
    """The ``system|code → analyte`` table the rules take, per sender: the sender's confirmed
    mappings, then those for every sender, then the static settings."""

    def __init__(self, static: Mapping[str, str] | None = None) -> None:
        self._static = dict(static or {})
        self._mapped: dict[str, dict[str, str]] = {}
        self._confirmed: frozenset[str] = frozenset()
        self._per_sender: dict[str, Mapping[str, str]] = {}

    @property
    def static(self) -> Mapping[str, str]:
        """The deployment's own table (`CdsSettings.local_codes`)."""
        return self._static

    def replace(self, mappings: Iterable[CodeMapping]) -> None:
        """Use ``mappings`` from now on (every confirmed mapping, their current versions)."""
        mapped: dict[str, dict[str, str]] = {}
        confirmed = set()
        for m in mappings:
            confirmed.add(m.key)
            if m.current.analyte:
                mapped.setdefault(m.sender, {})[f"{m.system}|{m.code}"] = m.current.analyte
        self._mapped = mapped
        self._confirmed = frozenset(confirmed)
        self._per_sender = {}

    def known(self, sighting: Sighting) -> bool:
        """Whether a person or the configuration has said what ``sighting``'s code is (a LOINC
        code no rule reads included): it is no longer asked about."""
        if f"{sighting.system}|{sighting.code}" in self.for_sender(sighting.sender):
            return True
        either = (sighting.key, code_key(ANY_SENDER, sighting.system, sighting.code))
        return any(k in self._confirmed for k in either)

    def for_sender(self, sender: str) -> Mapping[str, str]:
        """What ``sender``'s codes mean to the rules."""
        known = self._per_sender.get(sender)
        if known is None:
            known = {**self._static, **self._mapped.get(ANY_SENDER, {}), **self._mapped.get(sender, {})}
            self._per_sender[sender] = known
        return known
