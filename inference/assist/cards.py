"""CDS Hooks cards for assistance: possible undocumented diagnoses and treatment suggestions on
`patient-view`, advice on draft medication orders on `order-select` and `order-sign`. Pure.

- A diagnosis card ("Possible undocumented diagnosis: …") offers one suggestion: create the
  Condition as *provisional* on the problem list. Accepted through CDS Hooks feedback, the
  assistance stage also writes that Condition back over FHIR (`provisional_condition`).
- A treatment card offers a MedicationRequest with intent ``proposal`` (status draft), or a
  ServiceRequest proposal for a test.
- An order card says why a drafted drug is not this patient's best choice and offers to replace
  the draft with the alternative (delete + create).

Card uuids are the suggestions' deterministic ids, so the same record shows the same card
(deduplicated by the EHR) and feedback finds its rule (``source.topic.code``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from inference.assist.suggestions import (
    SNOMED,
    Concept,
    DiagnosisSuggestion,
    TreatmentSuggestion,
)
from inference.assist.treatments import OrderAdvice
from kernel.cds_hooks import OVERRIDE_SYSTEM, RULES_SYSTEM
from kernel.events import deterministic_id
from kernel.writeback import DEVICE_DISPLAY

DIAGNOSES = "clinstream-assist-diagnoses"
TREATMENTS = "clinstream-assist-treatments"
ORDER_SELECT = "clinstream-assist-order-select"
ORDER_SIGN = "clinstream-assist-order-sign"
HOOKS: Mapping[str, str] = {
    DIAGNOSES: "patient-view",
    TREATMENTS: "patient-view",
    ORDER_SELECT: "order-select",
    ORDER_SIGN: "order-sign",
}
OVERRIDE_REASONS = (
    ("already-addressed", "Already addressed"),
    ("not-clinically-relevant", "Not clinically relevant for this patient"),
    ("data-error", "The data behind the suggestion is wrong"),
    ("patient-preference", "Patient preference"),
)
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
_PREFETCH = {"patient": "Patient/{{context.patientId}}"}


def definitions() -> list[dict[str, Any]]:
    """The services' discovery entries."""
    common = {"prefetch": _PREFETCH}
    return [
        {
            "id": DIAGNOSES,
            "hook": "patient-view",
            "title": "clinstream: possible undocumented diagnoses",
            "description": "Problems the record supports (laboratory results, vital signs, BMI) that the "
            "active problem list lacks, each with its published criteria and the results behind it.",
            **common,
        },
        {
            "id": TREATMENTS,
            "hook": "patient-view",
            "title": "clinstream: guideline treatment suggestions",
            "description": "First-line therapy for the patient's problems (ACC/AHA, ADA), checked "
            "against allergies, interactions, renal function, pregnancy and age; monitoring due.",
            **common,
        },
        {
            "id": ORDER_SELECT,
            "hook": "order-select",
            "title": "clinstream: is the selected drug this patient's best choice",
            "description": "Selected medication orders checked against the guideline's first-line "
            "choice for this patient and what the record contraindicates.",
            **common,
        },
        {
            "id": ORDER_SIGN,
            "hook": "order-sign",
            "title": "clinstream: are the drafted drugs this patient's best choice",
            "description": "Every drafted medication order checked like order-select.",
            **common,
        },
    ]


def _source(rule_id: str) -> dict[str, Any]:
    return {"label": DEVICE_DISPLAY, "topic": {"system": RULES_SYSTEM, "code": rule_id}}


def _overrides() -> list[dict[str, str]]:
    return [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS]


def _detail(rationale: str, evidence: Sequence[Any], citations: Sequence[Any], rule: Any) -> str:
    lines = [rationale, ""]
    if evidence:
        lines += ["| evidence | date | resource |", "| --- | --- | --- |"]
        lines += [f"| {e.text} | {e.date or '—'} | {e.resource_id} |" for e in evidence]
        lines.append("")
    lines += [f"Source: {c.citation} ({c.section})" for c in citations]
    lines.append(f"Rule `{rule.id}` v{rule.version}.")
    return "\n".join(lines)


def _concept(c: Concept) -> dict[str, Any]:
    return c.model_dump(mode="json") | {"text": c.display}


def provisional_condition(
    s: DiagnosisSuggestion, patient_key: str, patient_id: str, subject: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The Condition a diagnosis suggestion proposes: provisional, on the problem list, its
    evidence the results behind it (deterministic id: accepting twice writes one Condition).
    ``subject`` overrides ``Patient/{patient_id}`` (write-back names the EHR's MRN)."""
    return {
        "resourceType": "Condition",
        "id": deterministic_id("Condition", patient_key, s.rule.id, s.code.coding[0].code),
        "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": "provisional"}]},
        "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}],
        "code": _concept(s.code),
        "subject": subject or {"reference": f"Patient/{patient_id}"},
        "evidence": [{"detail": [{"reference": e.resource_id} for e in s.evidence]}] if s.evidence else [],
        "note": [
            {"text": f"Suggested by {DEVICE_DISPLAY}, rule {s.rule.id} v{s.rule.version}: {s.rationale}"}
        ],
    }


def condition_suggestion_uuid(s: DiagnosisSuggestion) -> str:
    """The uuid of a diagnosis card's "add to the problem list" suggestion."""
    return deterministic_id("Suggestion", s.id, "condition")


def diagnosis_card(s: DiagnosisSuggestion, patient_key: str, patient_id: str) -> dict[str, Any]:
    """The `patient-view` card of one diagnosis suggestion."""
    display = s.code.display
    condition = provisional_condition(s, patient_key, patient_id)
    return {
        "uuid": s.id,
        "summary": f"Possible undocumented diagnosis: {display}"[:140],
        "indicator": "info",
        "detail": _detail(s.rationale, s.evidence, s.citations, s.rule),
        "source": _source(s.rule.id),
        "suggestions": [
            {
                "label": f"Add {display} to the problem list as provisional"[:140],
                "uuid": condition_suggestion_uuid(s),
                "isRecommended": False,
                "actions": [
                    {
                        "type": "create",
                        "description": f"Provisional problem-list entry: {display}",
                        "resource": condition,
                    }
                ],
            }
        ],
        "selectionBehavior": "at-most-one",
        "overrideReasons": _overrides(),
        "links": [],
    }


def _proposal(s: TreatmentSuggestion, patient_id: str) -> dict[str, Any] | None:
    note = [{"text": f"Proposed by {DEVICE_DISPLAY}, rule {s.rule.id} v{s.rule.version}: {s.rationale}"}]
    if s.kind == "start" and s.medication is not None:
        return {
            "resourceType": "MedicationRequest",
            "id": deterministic_id("MedicationRequest", s.id),
            "status": "draft",
            "intent": "proposal",
            "medicationCodeableConcept": _concept(s.medication),
            "subject": {"reference": f"Patient/{patient_id}"},
            "reasonCode": [_concept(s.for_)],
            "dosageInstruction": [{"text": s.dose}] if s.dose else [],
            "note": note,
        }
    if s.kind in ("order-test", "monitor") and s.test is not None:
        return {
            "resourceType": "ServiceRequest",
            "id": deterministic_id("ServiceRequest", s.id),
            "status": "draft",
            "intent": "proposal",
            "category": [
                {"coding": [{"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}]}
            ],
            "code": _concept(s.test),
            "subject": {"reference": f"Patient/{patient_id}"},
            "reasonCode": [_concept(s.for_)],
            "note": note,
        }
    return None


def _treatment_summary(s: TreatmentSuggestion) -> str:
    drug = s.medication.display if s.medication is not None else ""
    test = s.test.display if s.test is not None else ""
    return {
        "start": f"Suggested for {s.for_.display}: start {drug}",
        "hold": f"Review: hold {drug}",
        "adjust-dose": f"Review the dose of {drug}",
        "monitor": f"After starting {drug}: check {test}",
        "order-test": f"Due for {s.for_.display}: {test}",
    }[s.kind][:140]


def treatment_card(s: TreatmentSuggestion, patient_id: str) -> dict[str, Any]:
    """The `patient-view` card of one treatment suggestion."""
    detail = _detail(s.rationale, s.evidence, s.citations, s.rule)
    if s.personalisation:
        detail = "Personalised: " + "; ".join(s.personalisation) + ".\n\n" + detail
    if s.alternatives:
        detail += "\nAlternatives: " + ", ".join(a.display for a in s.alternatives) + "."
    card: dict[str, Any] = {
        "uuid": s.id,
        "summary": _treatment_summary(s),
        "indicator": "warning" if s.kind in ("hold", "adjust-dose") else "info",
        "detail": detail,
        "source": _source(s.rule.id),
        "overrideReasons": _overrides(),
        "links": [],
    }
    resource = _proposal(s, patient_id)
    if resource is not None:
        card["suggestions"] = [
            {
                "label": card["summary"],
                "uuid": deterministic_id("Suggestion", s.id, "proposal"),
                "isRecommended": False,
                "actions": [{"type": "create", "description": card["summary"], "resource": resource}],
            }
        ]
        card["selectionBehavior"] = "at-most-one"
    return card


def order_card(
    advice: OrderAdvice, order: Mapping[str, Any], patient_key: str, patient_id: str
) -> dict[str, Any]:
    """An `order-select` / `order-sign` card: the drafted drug is not this patient's best choice."""
    ref = f"{order.get('resourceType')}/{order.get('id')}" if order.get("id") else ""
    uuid = deterministic_id("OrderAdvice", patient_key, ref or advice.order_text, advice.reason)
    alternative = advice.alternative
    summary = f"{advice.order_text}: not the best choice for this patient"[:140]
    detail = f"{advice.reason[0].upper()}{advice.reason[1:]}."
    rule_id = alternative.rule.id if alternative is not None else "tx-order-review"
    card: dict[str, Any] = {
        "uuid": uuid,
        "summary": summary,
        "indicator": advice.severity,
        "detail": detail,
        "source": _source(rule_id),
        "overrideReasons": _overrides(),
        "links": [],
    }
    if alternative is not None and alternative.medication is not None:
        card["detail"] += "\n\n" + _detail(
            alternative.rationale, alternative.evidence, alternative.citations, alternative.rule
        )
        actions: list[dict[str, Any]] = []
        if ref:
            actions.append(
                {
                    "type": "delete",
                    "description": f"Remove the draft order: {advice.order_text}",
                    "resource": ref,
                }
            )
        proposal = _proposal(alternative, patient_id)
        if proposal is not None:
            actions.append(
                {
                    "type": "create",
                    "description": f"Order {alternative.medication.display} instead",
                    "resource": proposal,
                }
            )
        card["suggestions"] = [
            {
                "label": f"Replace with {alternative.medication.display}"[:140],
                "uuid": deterministic_id("Suggestion", uuid, "replace"),
                "isRecommended": advice.severity == "warning",
                "actions": actions,
            }
        ]
        card["selectionBehavior"] = "at-most-one"
    return card
