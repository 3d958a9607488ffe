"""Personalized treatment suggestions: guideline first-line therapy for the patient's documented
and suggested problems, checked against the record. Pure.

For each problem the guideline's first-line drugs are ranked for this patient (a comorbidity
or group the guideline names changes the order), then every candidate the record contraindicates
is dropped: a recorded allergy to the drug or its class (`kernel.drugs.allergy_conflict`), a
listed interaction with an active medication (`kernel.drugs.interaction_between`), renal
function, pregnancy, or age. The first candidate left is suggested (``start``), the others are
its alternatives; ``personalisation`` says what in this patient changed the choice. A problem
already treated by a drug of the class gets no ``start``. An active drug the record now
contraindicates becomes ``hold`` or ``adjust-dose``; the monitoring the guidelines ask for
becomes ``monitor`` or ``order-test``.

Drugs are named by their RxNorm ingredient (the display is the active ingredient); the usual
starting dose is a text for the clinician, not an order.

Rules:

- tx-hypertension: a thiazide, ACE inhibitor, ARB or calcium channel blocker; an ACE inhibitor or
  ARB first with diabetes, or with CKD and albuminuria; a thiazide or CCB first in Black adults;
  labetalol in pregnancy (ACC/AHA 2017).
- tx-statin: high intensity with clinical ASCVD or an LDL of 190 mg/dL or more; moderate with
  diabetes, or hyperlipidemia, at 40 to 75 years (ACC/AHA 2018).
- tx-metformin: metformin for type 2 diabetes unless the eGFR is below 30; not started at 30 to
  45; an active one held below 30 and its dose reviewed at 30 to 45 (ADA 2025).
- tx-levothyroxine: levothyroxine for hypothyroidism (ATA 2014).
- tx-monitor-raas, tx-monitor-hba1c: potassium and creatinine 2 to 4 weeks after an ACE inhibitor
  or ARB (KDIGO 2024); HbA1c every 6 months, every 3 when above 7 % (ADA 2025).
- tx-contraindicated: hold an active drug that a pregnancy or a recorded allergy now rules out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Literal

from inference.assist.diagnoses import FAMILIES, families_of
from inference.assist.facts import Facts, shown
from inference.assist.suggestions import (
    LOINC,
    SNOMED,
    Concept,
    DiagnosisSuggestion,
    EvidenceItem,
    Kind,
    RuleRef,
    TreatmentSuggestion,
    cite,
    concept,
    reading_evidence,
    suggestion_id,
)
from kernel.chart import RXNORM, Course, Problem
from kernel.drugs import allergy_conflict, interaction_between, names_of


@dataclass(frozen=True, slots=True)
class Drug:
    """A first-line drug: RxNorm ingredient, its class (`kernel.drugs.CLASSES`) and usual start."""

    rxnorm: str
    name: str
    drug_class: str
    dose: str

    @property
    def concept(self) -> Concept:
        """The RxNorm ingredient concept."""
        return concept((RXNORM, self.rxnorm, self.name))


LISINOPRIL = Drug("29046", "lisinopril", "ace inhibitor", "10 mg orally once daily")
LOSARTAN = Drug("52175", "losartan", "angiotensin receptor blocker", "50 mg orally once daily")
CHLORTHALIDONE = Drug("2409", "chlorthalidone", "thiazide", "12.5 mg orally once daily")
AMLODIPINE = Drug("17767", "amlodipine", "calcium channel blocker", "5 mg orally once daily")
LABETALOL = Drug("6185", "labetalol", "beta blocker", "100 mg orally twice daily")
ATORVASTATIN_HIGH = Drug("83367", "atorvastatin", "statin", "40 mg orally once daily (high intensity)")
ATORVASTATIN_MODERATE = Drug(
    "83367", "atorvastatin", "statin", "20 mg orally once daily (moderate intensity)"
)
ROSUVASTATIN_HIGH = Drug("301542", "rosuvastatin", "statin", "20 mg orally once daily (high intensity)")
ROSUVASTATIN_MODERATE = Drug(
    "301542", "rosuvastatin", "statin", "10 mg orally once daily (moderate intensity)"
)
METFORMIN = Drug("6809", "metformin", "biguanide", "500 mg orally once daily with a meal, titrated")
LEVOTHYROXINE = Drug(
    "10582", "levothyroxine", "thyroid hormone", "1.6 mcg/kg/day; 25 to 50 mcg in older adults"
)

ANTIHYPERTENSIVE = frozenset(
    {
        "thiazide",
        "ace inhibitor",
        "angiotensin receptor blocker",
        "calcium channel blocker",
        "beta blocker",
        "loop diuretic",
        "potassium-sparing diuretic",
    }
)
RAAS = frozenset({"ace inhibitor", "angiotensin receptor blocker"})
_NO_PREGNANCY = RAAS | {"statin"}
_ASCVD = re.compile(
    r"myocardial infarction|coronary|angina|stroke|cerebral infarction|cerebrovascular accident|"
    r"peripheral arter|transient ischemic",
    re.I,
)
_EGFR_METFORMIN_STOP, _EGFR_METFORMIN_START = Decimal(30), Decimal(45)


@dataclass(frozen=True, slots=True)
class Target:
    """A problem to treat: its family, concept, and where it comes from."""

    family: str
    concept: Concept
    documented: bool
    ref: str = ""  # the Condition, when documented


def targets(f: Facts, suggested: Iterable[DiagnosisSuggestion]) -> list[Target]:
    """The patient's documented current problems and suggested diagnoses, one per family."""
    out: dict[str, Target] = {}
    # The family's own problem (diabetes) before one that implies it (diabetic neuropathy).
    for p in sorted(f.problems, key=lambda p: not any(p.snomed in FAMILIES[x][0] for x in families_of(p))):
        for family in families_of(p):
            if family not in out:
                out[family] = Target(family, _problem_concept(p), True, p.ref)
    for s in suggested:
        out.setdefault(s.family, Target(s.family, s.code, False))
    return list(out.values())


def _problem_concept(p: Problem) -> Concept:
    return concept((SNOMED, p.snomed or "", p.text)) if p.snomed else concept(("", "", p.text))


def excluded(f: Facts, name: str) -> str:
    """Why the record contraindicates the drug ``name`` (as written) for this patient, or ``""``:
    an allergy to it or its class, a listed interaction with an active drug, pregnancy, renal
    function."""
    for allergy in f.allergies:
        conflict = allergy_conflict(name, allergy.text)
        if conflict is not None:
            return f"recorded allergy '{allergy.text}' excludes {name} ({conflict.kind} drug or class)"
    for course in f.active_courses():
        rule = interaction_between(name, course.name)
        if rule is not None and rule.severity in ("critical", "warning"):
            return f"{name} interacts with active {course.name}: {rule.description}"
    names = names_of(name)
    if f.pregnant and names & _NO_PREGNANCY:
        return f"{name} ({', '.join(sorted(names & _NO_PREGNANCY))}) is not used in pregnancy"
    egfr = f.latest("egfr")
    if "metformin" in names and egfr is not None and egfr.value is not None:
        if egfr.value < _EGFR_METFORMIN_STOP:
            return f"eGFR {shown(egfr)} is below 30: metformin is contraindicated"
        if egfr.value < _EGFR_METFORMIN_START:
            return f"eGFR {shown(egfr)} is 30 to 45: metformin is not started"
    return ""


def _evidence_of(f: Facts, refs: Iterable[str]) -> tuple[EvidenceItem, ...]:
    return tuple(EvidenceItem(resource_id=r, text=f.text_of(r)) for r in dict.fromkeys(refs) if r)


def _start(
    f: Facts,
    target: Target,
    rule: str,
    ranked: Sequence[Drug],
    why: str,
    personal: list[str],
    passages: Sequence[str],
    extra_evidence: Sequence[EvidenceItem] = (),
) -> TreatmentSuggestion | None:
    kept: list[Drug] = []
    passages = list(passages)
    for drug in ranked:
        reason = excluded(f, drug.name)
        if reason:
            personal.append(reason)
            if reason.startswith("recorded allergy") and "drug-allergy" not in passages:
                passages.append("drug-allergy")
        elif drug.rxnorm not in {d.rxnorm for d in kept}:
            kept.append(drug)
    if not kept:
        return None
    chosen = kept[0]
    return TreatmentSuggestion(
        id=suggestion_id(f.patient_id, rule, f"start/{chosen.rxnorm}"),
        medication=chosen.concept,
        for_=target.concept,
        kind="start",
        dose=chosen.dose,
        rationale=why.format(drug=chosen.name),
        personalisation=tuple(dict.fromkeys(personal)),
        alternatives=tuple(d.concept for d in kept[1:]),
        evidence=_evidence_of(f, [target.ref]) + tuple(extra_evidence),
        citations=cite(*passages),
        rule=RuleRef(id=rule, version=VERSIONS[rule]),
    )


def _on_class(f: Facts, classes: frozenset[str]) -> list[Course]:
    return [c for c in f.active_courses() if names_of(c.name) & classes]


def _hypertension_ranking(f: Facts, held: frozenset[str]) -> tuple[list[Drug], list[str], list[str]]:
    """First-line drugs in this patient's order, why, and the passages that say so."""
    passages = ["bp-first-line"]
    uacr = f.latest("uacr")
    albuminuria = uacr is not None and uacr.value is not None and uacr.value >= 30
    if f.pregnant:
        return [LABETALOL], ["pregnancy: ACE inhibitors and ARBs are not used; labetalol"], passages
    if "diabetes" in held:
        passages.append("bp-comorbid")
        return (
            [LISINOPRIL, LOSARTAN, CHLORTHALIDONE, AMLODIPINE],
            ["diabetes: an ACE inhibitor or ARB is preferred"],
            passages,
        )
    if "ckd" in held and albuminuria and uacr is not None:
        passages.append("bp-comorbid")
        return (
            [LISINOPRIL, LOSARTAN, CHLORTHALIDONE, AMLODIPINE],
            [
                f"chronic kidney disease with albuminuria ({shown(uacr)}): "
                "an ACE inhibitor or ARB is preferred"
            ],
            passages,
        )
    if f.black and "ckd" not in held:
        return (
            [CHLORTHALIDONE, AMLODIPINE, LISINOPRIL, LOSARTAN],
            ["Black adult without chronic kidney disease: a thiazide or calcium channel blocker first"],
            passages,
        )
    return [CHLORTHALIDONE, LISINOPRIL, LOSARTAN, AMLODIPINE], [], passages


def hypertension(f: Facts, target: Target, held: frozenset[str]) -> list[TreatmentSuggestion]:
    """tx-hypertension: a first-line antihypertensive when none is active."""
    if (f.age is not None and f.age < 18) or _on_class(f, ANTIHYPERTENSIVE):
        return []
    ranked, personal, passages = _hypertension_ranking(f, held)
    why = (
        "Hypertension without an active antihypertensive: {drug} is a guideline first-line agent "
        "(ACC/AHA 2017)."
    )
    start = _start(f, target, "tx-hypertension", ranked, why, personal, passages)
    if start is None:
        return []
    out = [start]
    if start.medication is not None and names_of(start.medication.display) & RAAS:
        out.append(_raas_monitoring(f, target, start.medication, planned=True))
    return out


def _raas_monitoring(f: Facts, target: Target, drug: Concept, *, planned: bool) -> TreatmentSuggestion:
    test = concept(
        (LOINC, "2823-3", "Potassium [Moles/volume] in Serum or Plasma"),
        (LOINC, "2160-0", "Creatinine [Mass/volume] in Serum or Plasma"),
    )
    when = "2 to 4 weeks after starting it" if planned else "now: it was started without a check since"
    return TreatmentSuggestion(
        id=suggestion_id(
            f.patient_id, "tx-monitor-raas", f"{'monitor' if planned else 'order-test'}/{drug.coding[0].code}"
        ),
        medication=drug,
        for_=target.concept,
        kind="monitor" if planned else "order-test",
        test=test,
        rationale=f"Check potassium and creatinine {when} ({drug.display}; KDIGO 2024).",
        citations=cite("ckd-raas-monitoring"),
        rule=RuleRef(id="tx-monitor-raas", version=VERSIONS["tx-monitor-raas"]),
    )


def _ascvd(f: Facts) -> Problem | None:
    return next((p for p in f.problems if _ASCVD.search(p.text)), None)


def statin(f: Facts, target: Target, held: frozenset[str]) -> list[TreatmentSuggestion]:
    """tx-statin: statin intensity by risk (ACC/AHA 2018) when no statin is active."""
    if _on_class(f, frozenset({"statin"})) or f.age is None or f.age < 20:
        return []
    ldl = f.latest("ldl")
    ascvd = _ascvd(f)
    personal: list[str] = []
    evidence: list[EvidenceItem] = []
    if ldl is not None:
        evidence.append(reading_evidence(ldl, "LDL cholesterol"))
    if ascvd is not None:
        high, personal = f.age <= 75, [f"clinical ASCVD on the problem list ({ascvd.text})"]
        evidence += _evidence_of(f, [ascvd.ref])
    elif ldl is not None and ldl.value is not None and ldl.value >= 190 and f.age <= 75:
        high, personal = True, [f"LDL {shown(ldl)}: 190 mg/dL or more"]
    elif "diabetes" in held and 40 <= f.age <= 75:
        high, personal = False, ["diabetes at 40 to 75 years"]
    elif target.family == "hyperlipidemia" and 40 <= f.age <= 75:
        high, personal = False, ["hyperlipidemia at 40 to 75 years; intensity by 10-year risk"]
    else:
        return []
    if target.family not in ("hyperlipidemia", "diabetes") and ascvd is None:
        return []
    ranked = (
        [ATORVASTATIN_HIGH, ROSUVASTATIN_HIGH] if high else [ATORVASTATIN_MODERATE, ROSUVASTATIN_MODERATE]
    )
    intensity = "high" if high else "moderate"
    why = (
        f"A {intensity}-intensity statin ({{drug}}) is the guideline's first-line therapy for this risk "
        "(ACC/AHA 2018)."
    )
    start = _start(f, target, "tx-statin", ranked, why, personal, ["statin-intensity"], evidence)
    return [start] if start is not None else []


def metformin(f: Facts, target: Target) -> list[TreatmentSuggestion]:
    """tx-metformin: start metformin for type 2 diabetes; hold or review an active one by eGFR."""
    if f.age is not None and f.age < 18:
        return []
    active = [c for c in f.active_courses() if "metformin" in names_of(c.name)]
    egfr = f.latest("egfr")
    if active:
        if egfr is None or egfr.value is None or egfr.value >= _EGFR_METFORMIN_START:
            return []
        kind: Kind = "hold" if egfr.value < _EGFR_METFORMIN_STOP else "adjust-dose"
        why = (
            f"eGFR {shown(egfr)} is below 30: metformin is contraindicated; hold it (ADA 2025)."
            if kind == "hold"
            else f"eGFR {shown(egfr)} is 30 to 45: review the metformin dose (ADA 2025)."
        )
        return [
            TreatmentSuggestion(
                id=suggestion_id(f.patient_id, "tx-metformin", f"{kind}/{METFORMIN.rxnorm}"),
                medication=METFORMIN.concept,
                for_=target.concept,
                kind=kind,
                rationale=why,
                personalisation=(f"renal function: eGFR {shown(egfr)}",),
                evidence=(reading_evidence(egfr, "eGFR"), *_evidence_of(f, [active[0].latest_ref])),
                citations=cite("ada-metformin"),
                rule=RuleRef(id="tx-metformin", version=VERSIONS["tx-metformin"]),
            )
        ]
    why = "Type 2 diabetes without metformin: {drug} is the preferred initial therapy (ADA 2025)."
    evidence = [reading_evidence(egfr, "eGFR")] if egfr is not None else []
    personal = [f"renal function allows it: eGFR {shown(egfr)}"] if egfr is not None else []
    start = _start(f, target, "tx-metformin", [METFORMIN], why, personal, ["ada-metformin"], evidence)
    return [start] if start is not None else []


def hba1c_monitoring(f: Facts, target: Target) -> list[TreatmentSuggestion]:
    """tx-monitor-hba1c: HbA1c every 6 months, every 3 when the last was above 7 %."""
    last = f.latest("hba1c")
    due = (
        timedelta(days=91)
        if last is not None and last.value is not None and last.value > 7
        else timedelta(days=182)
    )
    if last is not None and f.at - last.at < due:
        return []
    when = f"last {shown(last)}" if last is not None else "none on record"
    return [
        TreatmentSuggestion(
            id=suggestion_id(f.patient_id, "tx-monitor-hba1c", f"order-test/{f.at.date().isoformat()[:7]}"),
            for_=target.concept,
            kind="order-test",
            test=concept((LOINC, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood")),
            rationale=f"HbA1c is due ({when}): at least every 6 months, every 3 when not at goal (ADA 2025).",
            evidence=(reading_evidence(last, "HbA1c"),) if last is not None else (),
            citations=cite("ada-hba1c"),
            rule=RuleRef(id="tx-monitor-hba1c", version=VERSIONS["tx-monitor-hba1c"]),
        )
    ]


def raas_follow_up(f: Facts, target: Target) -> list[TreatmentSuggestion]:
    """tx-monitor-raas: an ACE inhibitor or ARB started in the last 4 weeks with no potassium and
    creatinine since."""
    out = []
    for course in _on_class(f, RAAS):
        if course.start is None or f.at - course.start > timedelta(weeks=4):
            continue
        checked = all(
            any(r.at >= course.start for r in f.series(analyte)) for analyte in ("potassium", "creatinine")
        )
        if not checked:
            drug = concept((RXNORM, course.rxnorm, course.name))
            out.append(_raas_monitoring(f, target, drug, planned=False))
    return out


def hypothyroid(f: Facts, target: Target) -> list[TreatmentSuggestion]:
    """tx-levothyroxine: levothyroxine for hypothyroidism when none is active."""
    if any(names_of(c.name) & {"levothyroxine", "liothyronine"} for c in f.active_courses()):
        return []
    why = "Hypothyroidism without thyroid hormone: {drug} is the treatment of choice (ATA 2014)."
    start = _start(f, target, "tx-levothyroxine", [LEVOTHYROXINE], why, [], ["thyroid-treatment"])
    return [start] if start is not None else []


def contraindicated_active(f: Facts) -> list[TreatmentSuggestion]:
    """``hold`` for an active drug the record now contraindicates (pregnancy, allergy)."""
    out = []
    for course in f.active_courses():
        names = names_of(course.name)
        reason, passage = "", ""
        if f.pregnant and names & _NO_PREGNANCY:
            reason = f"{course.name} is not used in pregnancy"
            passage = "bp-first-line" if names & RAAS else "statin-intensity"
        for allergy in f.allergies:
            conflict = allergy_conflict(course.name, allergy.text)
            if not reason and conflict is not None and conflict.kind != "cross":
                reason, passage = f"recorded allergy '{allergy.text}'", "drug-allergy"
        if not reason:
            continue
        drug = concept((RXNORM, course.rxnorm, course.name))
        out.append(
            TreatmentSuggestion(
                id=suggestion_id(f.patient_id, "tx-contraindicated", f"hold/{course.latest_ref}"),
                medication=drug,
                for_=drug,
                kind="hold",
                rationale=f"Active {course.name}: {reason}. Review and hold.",
                personalisation=(reason,),
                evidence=_evidence_of(f, [course.latest_ref]),
                citations=cite(passage),
                rule=RuleRef(id="tx-contraindicated", version=VERSIONS["tx-contraindicated"]),
            )
        )
    return out


# The problem an ordered drug treats, by its class (for order-select and order-sign).
_TREATS = (
    (ANTIHYPERTENSIVE, "hypertension"),
    (frozenset({"statin"}), "hyperlipidemia"),
    (frozenset({"metformin"}), "diabetes"),
    (frozenset({"levothyroxine"}), "hypothyroidism"),
)


@dataclass(frozen=True, slots=True)
class OrderAdvice:
    """Why a drug being ordered is not this patient's best choice, and the better one."""

    order_text: str
    problem: str
    reason: str
    severity: Literal["warning", "info"]
    alternative: TreatmentSuggestion | None


def review_order(f: Facts, suggested: Iterable[DiagnosisSuggestion], order_text: str) -> OrderAdvice | None:
    """Advice on one ordered drug (as written): contraindicated by the record (warning), or not
    the guideline's first choice for this patient (info); None when it is a good choice or a drug
    these rules do not cover."""
    names = names_of(order_text)
    family = next((fam for classes, fam in _TREATS if names & classes), None)
    if family is None:
        return None
    goals = targets(f, suggested)
    target = next((t for t in goals if t.family == family), Target(family, concept(("", "", family)), False))
    held = frozenset(t.family for t in goals)
    reason = excluded(f, order_text)
    # The first-line choice for this patient if nothing of the class were active or ordered.
    best = _best_start(f, target, held)
    if reason:
        return OrderAdvice(order_text, family, reason, "warning", best)
    if best is None or best.medication is None or names & names_of(best.medication.display):
        return None
    if family == "hypertension":
        preferred = {d.drug_class for d in _hypertension_ranking(f, held)[0][:2]}
        if names & preferred:
            return None
        why = f"for this patient the guideline prefers {best.medication.display}: " + "; ".join(
            best.personalisation or ("first-line agent",)
        )
        return OrderAdvice(order_text, family, why, "info", best)
    return None


def _best_start(f: Facts, target: Target, held: frozenset[str]) -> TreatmentSuggestion | None:
    bare = replace(
        f,
        courses=tuple(
            c for c in f.courses if not c.active or not names_of(c.name) & _CLASSES_OF[target.family]
        ),
    )
    found = {
        "hypertension": lambda: hypertension(bare, target, held),
        "hyperlipidemia": lambda: statin(bare, target, held),
        "diabetes": lambda: metformin(bare, target),
        "hypothyroidism": lambda: hypothyroid(bare, target),
    }[target.family]()
    return next((s for s in found if s.kind == "start"), None)


_CLASSES_OF = {fam: classes for classes, fam in _TREATS}


VERSIONS: Mapping[str, str] = {
    "tx-hypertension": "1.0.0",
    "tx-statin": "1.0.0",
    "tx-metformin": "1.0.0",
    "tx-levothyroxine": "1.0.0",
    "tx-monitor-raas": "1.0.0",
    "tx-monitor-hba1c": "1.0.0",
    "tx-contraindicated": "1.0.0",
}
"""Each rule's version: a change to a rule's choices or exclusions bumps its own."""
RULE_IDS = tuple(VERSIONS)


def suggest_treatments(
    f: Facts, suggested: Iterable[DiagnosisSuggestion], *, disabled: frozenset[str] = frozenset()
) -> list[TreatmentSuggestion]:
    """Treatment suggestions for the documented and suggested problems of ``f``."""
    goals = targets(f, suggested)
    held = frozenset(t.family for t in goals)
    out: list[TreatmentSuggestion] = []
    for target in goals:
        if target.family == "hypertension":
            out += hypertension(f, target, held)
            out += raas_follow_up(f, target)
        elif target.family in ("hyperlipidemia",):
            out += statin(f, target, held)
        elif target.family == "diabetes":
            out += metformin(f, target)
            out += statin(f, target, held)
            out += hba1c_monitoring(f, target)
        elif target.family == "hypothyroidism":
            out += hypothyroid(f, target)
    out += contraindicated_active(f)
    seen: set[str] = set()
    unique = []
    for s in out:
        if s.id not in seen and s.rule.id not in disabled:
            seen.add(s.id)
            unique.append(s)
    return unique
