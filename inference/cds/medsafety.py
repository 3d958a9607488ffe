"""Medication safety: drug–drug interactions, drug–allergy conflicts, renal dosing against eGFR.

Pure functions over the patient state. Medication and allergy texts are resolved to generic
ingredient names and drug classes (`kernel.drugs`). Interactions come from the 176 curated
pairs of `drug-interaction-mcp` (FDA labels, DailyMed), matched on those names and classes; a
pair the table does not list raises nothing, which is why a cleared order is not proof of
safety and the card says so.

Findings are raised only for what the record changed: a new or changed medication is checked
against every active medication, allergy and the latest eGFR; a new allergy against every
active medication; a new eGFR against every active medication. The same checks run on the
draft orders of a CDS Hooks `order-select` / `order-sign` call (`check_orders`) without
touching the state.

The renal table follows the AGS Beers Criteria 2019 (Table 6; nitrofurantoin from Table 2),
which states creatinine clearance; eGFR (mL/min/1.73 m², what laboratories report) stands in
for it here, as docs/decision-support.md says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from inference.cds.findings import Finding, input_of, shorten, time_or
from inference.cds.hygiene import SEVERITY_RANK
from inference.cds.state import Coded, PatientState, medication
from kernel.drugs import (
    allergy_conflict,
    ingredients,
    interaction_between,
    interactions,
)
from kernel.events import AlertInput, Severity

DDI_RULE = "drug-interaction"
ALLERGY_RULE = "drug-allergy"
RENAL_RULE = "renal-dosing"
RULE_VERSION = "1.0.0"
EGFR_WINDOW = timedelta(days=7)
DDI_CITATION = "drug-interaction-mcp 0.1.0 (curated from FDA drug labels and NIH DailyMed): {source}."
ALLERGY_CITATION = (
    "Khan DA, Banerji A, Blumenthal KG et al. Drug allergy: a 2022 practice parameter update. "
    "J Allergy Clin Immunol 2022;150(6):1333-1393."
)
RENAL_CITATION = (
    "2019 American Geriatrics Society Beers Criteria Update Expert Panel. J Am Geriatr Soc "
    "2019;67(4):674-694 (Table 6; nitrofurantoin Table 2); metformin: FDA Drug Safety "
    "Communication, 8 April 2016. Thresholds are creatinine clearance; eGFR stands in."
)


@dataclass(frozen=True, slots=True)
class RenalLimit:
    """Below ``below`` mL/min/1.73 m²: ``action`` (avoid: warning; reduce the dose: info)."""

    below: Decimal
    action: str
    severity: Severity


def _renal(*limits: tuple[str, str, Severity]) -> tuple[RenalLimit, ...]:
    return tuple(RenalLimit(Decimal(b), a, s) for b, a, s in limits)


_AVOID: Severity = "warning"
_REDUCE: Severity = "info"
RENAL: Mapping[str, tuple[RenalLimit, ...]] = {
    "metformin": _renal(
        ("30", "contraindicated", _AVOID), ("45", "do not start; reassess the benefit", _REDUCE)
    ),
    "nitrofurantoin": _renal(("30", "avoid", _AVOID)),
    "spironolactone": _renal(("30", "avoid", _AVOID)),
    "triamterene": _renal(("30", "avoid", _AVOID)),
    "amiloride": _renal(("30", "avoid", _AVOID)),
    "dabigatran": _renal(("30", "avoid", _AVOID)),
    "rivaroxaban": _renal(("15", "avoid", _AVOID), ("50", "reduce the dose", _REDUCE)),
    "apixaban": _renal(("25", "avoid", _AVOID)),
    "edoxaban": _renal(("15", "avoid", _AVOID), ("50", "reduce the dose", _REDUCE)),
    "fondaparinux": _renal(("30", "avoid", _AVOID)),
    "enoxaparin": _renal(("30", "reduce the dose", _REDUCE)),
    "ciprofloxacin": _renal(("30", "reduce the dose", _REDUCE)),
    "trimethoprim": _renal(("15", "avoid", _AVOID), ("30", "reduce the dose", _REDUCE)),
    "sulfamethoxazole": _renal(("15", "avoid", _AVOID), ("30", "reduce the dose", _REDUCE)),
    "duloxetine": _renal(("30", "avoid", _AVOID)),
    "gabapentin": _renal(("60", "reduce the dose", _REDUCE)),
    "pregabalin": _renal(("60", "reduce the dose", _REDUCE)),
    "levetiracetam": _renal(("80", "reduce the dose", _REDUCE)),
    "tramadol": _renal(("30", "reduce the dose (immediate release)", _REDUCE)),
    "famotidine": _renal(("50", "reduce the dose", _REDUCE)),
    "colchicine": _renal(("30", "reduce the dose; monitor", _REDUCE)),
    "probenecid": _renal(("30", "avoid", _AVOID)),
    **{
        nsaid: _renal(("30", "avoid", _AVOID))
        for nsaid in ("ibuprofen", "naproxen", "diclofenac", "ketorolac", "meloxicam", "indomethacin")
    },
}


def _input(label: str, item: Coded, at: datetime) -> AlertInput:
    return AlertInput(
        label=label, value=item.text or "(no text)", at=time_or(item.recorded, at), ref=item.ref
    )


def _pair(a: Coded, b: Coded, at: datetime) -> list[Finding]:
    rule = interaction_between(a.drug_text, b.drug_text)
    out = []
    if rule is not None:
        first = sorted(ingredients(a.drug_text))[0]
        second = sorted(ingredients(b.drug_text))[0]
        pair = " + ".join(sorted((first, second)))
        out.append(
            Finding(
                rule_id=DDI_RULE,
                rule_version=RULE_VERSION,
                key=f"{DDI_RULE}/{pair}",
                severity=rule.severity,
                level=0,
                summary=shorten(f"Interaction {pair}: {rule.description}", 140),
                detail=f"{rule.description} {rule.recommendation}",
                inputs=(_input("Medication", a, at), _input("Medication", b, at)),
                thresholds="listed as an interacting pair",
                citation=DDI_CITATION.format(source=rule.source),
                at=at,
            )
        )
    return out


def _allergy(medication: Coded, allergy: Coded, at: datetime) -> list[Finding]:
    conflict = allergy_conflict(medication.drug_text, allergy.drug_text)
    if conflict is None:
        return []
    severity: Severity
    if conflict.kind == "cross":
        severity, what, level = "warning", f"possible cross-reactivity ({conflict.name})", 0
    else:
        severity, what, level = "critical", f"allergy to {conflict.name}", 1
    generic = sorted(ingredients(medication.drug_text))[0]
    return [
        Finding(
            rule_id=ALLERGY_RULE,
            rule_version=RULE_VERSION,
            key=f"{ALLERGY_RULE}/{generic}",
            severity=severity,
            level=level,
            summary=shorten(f"{generic.capitalize()} ordered despite recorded {what}", 140),
            detail=f"Recorded allergy or intolerance: {allergy.text or '(no text)'}"
            + (f" (criticality {allergy.criticality})" if allergy.criticality else "")
            + f". Ordered: {medication.text}.",
            inputs=(_input("Medication", medication, at), _input("Allergy", allergy, at)),
            thresholds="same drug or drug class as the allergen"
            + ("" if severity == "critical" else "; penicillin-cephalosporin cross-reactivity"),
            citation=ALLERGY_CITATION,
            at=at,
        )
    ]


def _renal_check(medication: Coded, state: PatientState, at: datetime) -> list[Finding]:
    egfr = state.latest("egfr", at=at, window=EGFR_WINDOW)
    if egfr is None or egfr.value is None:
        return []
    for generic in sorted(ingredients(medication.drug_text)):
        for band, limit in enumerate(RENAL.get(generic, ())):
            if egfr.value < limit.below:
                level = len(RENAL[generic]) - band
                return [
                    Finding(
                        rule_id=RENAL_RULE,
                        rule_version=RULE_VERSION,
                        key=f"{RENAL_RULE}/{generic}",
                        severity=limit.severity,
                        level=level,
                        summary=shorten(
                            f"{generic.capitalize()} with eGFR {egfr.as_sent}: {limit.action}", 140
                        ),
                        detail=f"{generic.capitalize()}: {limit.action} when eGFR is below {limit.below}"
                        f" mL/min/1.73 m². Latest eGFR {egfr.as_sent}.",
                        inputs=(_input("Medication", medication, at), input_of("eGFR", egfr)),
                        thresholds=f"eGFR < {limit.below}: {limit.action}",
                        citation=RENAL_CITATION,
                        at=at,
                    )
                ]
    return []


def check_medications(
    state: PatientState, new: Iterable[Coded], *, at: datetime, new_allergies: Iterable[Coded] = ()
) -> list[Finding]:
    """Findings for medications ``new`` (against the state) and allergies ``new_allergies``.

    A medication in ``new`` that the state already holds is checked as new, not as established:
    each pair is checked once.
    """
    new = list(new)
    fresh = {m.ref for m in new}
    established = [m for m in state.active_medications() if m.ref not in fresh]
    allergies = state.active_allergies()
    findings: list[Finding] = []
    for i, med in enumerate(new):
        for other in [*established, *new[i + 1 :]]:  # the others, and the new ones after it
            findings += _pair(med, other, at)
        for allergy in allergies:
            findings += _allergy(med, allergy, at)
        findings += _renal_check(med, state, at)
    for allergy in new_allergies:
        for med in established:
            findings += _allergy(med, allergy, at)
    return _best_per_key(findings)


def _best_per_key(findings: list[Finding]) -> list[Finding]:
    def weight(finding: Finding) -> tuple[int, int]:
        return SEVERITY_RANK[finding.severity], finding.level

    best: dict[str, Finding] = {}
    for finding in findings:
        kept = best.get(finding.key)
        if kept is None or weight(finding) > weight(kept):
            best[finding.key] = finding
    return list(best.values())


def evaluate(state: PatientState, changed: frozenset[str], at: datetime) -> list[Finding]:
    """Findings for what the record changed: medications, allergies, a new eGFR."""
    active = state.active_medications()
    new_meds = [m for m in active if m.ref in changed]
    new_allergies = [a for a in state.active_allergies() if a.ref in changed]
    findings = check_medications(state, new_meds, at=at, new_allergies=new_allergies)
    if any(r.ref in changed for r in state.readings.get("egfr", [])):
        seen = {f.key for f in findings}
        findings += [
            f for m in active if m.ref not in changed for f in _renal_check(m, state, at) if f.key not in seen
        ]
    return findings


MEDICATION_ORDERS = frozenset({"MedicationRequest", "MedicationStatement"})


def preload() -> None:
    """Load the drug dictionary and the interaction table now (a stage calls this at start,
    so that the first medication does not wait for it inside a handler)."""
    ingredients("aspirin")
    interactions()


def _drafts(orders: Iterable[dict[str, Any]]) -> list[Coded]:
    return [
        medication(order, f"{order['resourceType']}/{order.get('id') or f'draft-{n}'}")
        for n, order in enumerate(orders)
        if order.get("resourceType") in MEDICATION_ORDERS
    ]


def check_orders(
    state: PatientState,
    orders: Iterable[dict[str, Any]],
    *,
    at: datetime,
    alongside: Iterable[dict[str, Any]] = (),
) -> list[Finding]:
    """Findings for draft medication orders (CDS Hooks ``draftOrders``); the state is not changed.

    ``alongside``: other drafts of the same session, checked against as if already ordered.
    """
    pending = {d.ref: d.model_copy(update={"status": "active"}) for d in _drafts(alongside)}
    context = state.model_copy(update={"medications": {**state.medications, **pending}}) if pending else state
    return check_medications(context, _drafts(orders), at=at)


def medication_review(state: PatientState, *, at: datetime) -> list[Finding]:
    """Every active medication checked against the others, the allergies and the latest eGFR."""
    return check_medications(state, state.active_medications(), at=at)
