"""CDS Hooks 2.0 documents: the discovery response, cards from a patient's alerts, feedback.

Pure functions. Cards are served from the precomputed patient state (`PatientState.alerts`
keeps the last alert per dedupe key), so answering a hook reads no history and runs no rule.
A card is the alert: its id is the card ``uuid`` (feedback names it), its summary is at most
140 characters, its detail lists every input with its time and source, the thresholds, the
rule version and the citation. Fields follow CDS Hooks 2.0 and stay valid in 3.0 (unknown
fields are ignored by clients; ``extension`` carries ours).
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from inference.cds import aki, critical
from inference.cds.findings import Finding, time_or
from inference.cds.hygiene import SEVERITY_RANK, alert_of, snooze, snoozed_until
from inference.cds.medsafety import medication_review
from inference.cds.state import PatientState
from kernel.analytes import BY_NAME, LOINC
from kernel.cds_hooks import OVERRIDE_SYSTEM, RULES_SYSTEM
from kernel.events import Alert, ClinicianFeedback, deterministic_id
from kernel.writeback import DEVICE_DISPLAY

PATIENT_VIEW = "clinstream-alerts"
ORDER_SELECT = "clinstream-order-select"
ORDER_SIGN = "clinstream-order-sign"
DISCHARGE = "clinstream-discharge"
HOOKS = {
    PATIENT_VIEW: "patient-view",
    ORDER_SELECT: "order-select",
    ORDER_SIGN: "order-sign",
    DISCHARGE: "encounter-discharge",
}
SOURCE_LABEL = DEVICE_DISPLAY
SNOMED = "http://snomed.info/sct"
OVERRIDE_REASONS = (
    ("already-addressed", "Already addressed"),
    ("not-clinically-relevant", "Not clinically relevant for this patient"),
    ("data-error", "The data behind the alert is wrong"),
    ("snooze-4h", "Snooze this alert for 4 hours"),
)
SNOOZE = {"snooze-4h": timedelta(hours=4)}
_INDICATOR = {"info": "info", "warning": "warning", "critical": "critical"}


_USAGE = (
    "The patient prefetch is needed when the deployment links EHR patients to HL7 v2 medical "
    "record numbers; without it and without fhirServer, 412."
)
_ORDERS = (
    "Draft medication orders checked against the patient's active medications (interactions from a "
    "curated table of 176 pairs), recorded allergies (drug classes, penicillin-cephalosporin "
    "cross-reactivity) and the latest eGFR (renal dosing). A pair the table does not list is not "
    "proof of safety."
)


def discovery() -> dict[str, Any]:
    """The `/cds-services` response."""
    prefetch = {"patient": "Patient/{{context.patientId}}"}
    return {
        "services": [
            {
                "id": PATIENT_VIEW,
                "hook": "patient-view",
                "title": "clinstream: current decision-support alerts",
                "description": "NEWS2, sepsis screening (qSOFA, SIRS), critical laboratory values, acute "
                "kidney injury (KDIGO) and medication safety raised on the patient's live data, with "
                "their inputs and sources.",
                "prefetch": prefetch,
                "usageRequirements": _USAGE,
            },
            {
                "id": ORDER_SELECT,
                "hook": "order-select",
                "title": "clinstream: medication safety of the selected orders",
                "description": _ORDERS
                + " The selected orders are checked; the other drafts count as ordered.",
                "prefetch": prefetch,
                "usageRequirements": _USAGE,
            },
            {
                "id": ORDER_SIGN,
                "hook": "order-sign",
                "title": "clinstream: medication safety before signing",
                "description": _ORDERS + " Every draft order is checked.",
                "prefetch": prefetch,
                "usageRequirements": _USAGE,
            },
            {
                "id": DISCHARGE,
                "hook": "encounter-discharge",
                "title": "clinstream: before discharge",
                "description": "The alerts raised during the stay that are still shown, and a medication "
                "review of the active list (interactions among them, allergies, renal dosing with the "
                "latest eGFR).",
                "prefetch": prefetch,
                "usageRequirements": _USAGE,
            },
        ]
    }


def _markdown_detail(alert: Alert) -> str:
    lines = [alert.detail, "", "| input | value | time |", "| --- | --- | --- |"]
    for item in alert.inputs:
        when = item.at.isoformat(timespec="minutes") if item.at else "—"
        lines.append(f"| {item.label} | {item.value} | {when} |")
    lines += ["", f"Thresholds: {alert.thresholds}.", f"Rule `{alert.rule_id}` v{alert.rule_version}."]
    lines.append(f"Source: {alert.citation}")
    return "\n".join(lines)


def card(alert: Alert) -> dict[str, Any]:
    """One CDS Hooks card for ``alert``."""
    return {
        "uuid": alert.id,
        "summary": alert.summary[:140],
        "indicator": _INDICATOR[alert.severity],
        "detail": _markdown_detail(alert),
        "source": {
            "label": SOURCE_LABEL,
            "topic": {"system": RULES_SYSTEM, "code": alert.rule_id},
        },
        "overrideReasons": [
            {"system": OVERRIDE_SYSTEM, "code": code, "display": display}
            for code, display in OVERRIDE_REASONS
        ],
        "links": [],
        "extension": {
            "clinstream-evidence": list(alert.evidence),
            "clinstream-rule-version": alert.rule_version,
            "clinstream-raised-at": alert.raised_at.isoformat(),
        },
    }


def _repeated_analyte(alert: Alert) -> str | None:
    """The analyte whose test a card proposes to repeat: a critical value is confirmed before
    it is acted on (the card's own advice), and KDIGO asks for creatinine to be followed."""
    if alert.rule_id == critical.RULE_ID:
        return alert.key.split("/")[1]  # critical-lab/<analyte>/<side>
    if alert.rule_id == aki.RULE_ID:
        return "creatinine"
    return None


def patient_view_card(alert: Alert, patient_id: str) -> dict[str, Any]:
    """A `patient-view` card for ``alert``. For a critical lab value or an AKI stage it carries
    a suggestion (not recommended: the clinician decides) to create a draft ServiceRequest
    for a repeat of the test, with the result that raised the alert as its reason, for the
    patient the CDS client named (``patient_id``, its own FHIR id)."""
    out = card(alert)
    analyte = BY_NAME.get(_repeated_analyte(alert) or "")
    if analyte is None or not analyte.order_code:
        return out
    label, rule = analyte.label.lower(), f"{alert.rule_id} v{alert.rule_version}"
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": deterministic_id("ServiceRequest", alert.id, "repeat"),
        "status": "draft",
        "intent": "proposal",
        "priority": "urgent" if alert.severity == "critical" else "routine",
        "category": [
            {"coding": [{"system": SNOMED, "code": "108252007", "display": "Laboratory procedure"}]}
        ],
        "code": {
            "coding": [{"system": LOINC, "code": analyte.order_code, "display": analyte.label}],
            "text": f"Repeat {label}",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "note": [{"text": f"Proposed by {SOURCE_LABEL}, rule {rule}: {alert.summary}"}],
    }
    if alert.inputs and alert.inputs[0].ref:  # the result that raised it
        request["reasonReference"] = [{"reference": alert.inputs[0].ref}]
    out["suggestions"] = [
        {
            "label": f"Order a repeat {label}",
            "uuid": deterministic_id("Suggestion", alert.id, "repeat"),
            "isRecommended": False,
            "actions": [
                {
                    "type": "create",
                    "description": f"Draft order: repeat {label} (LOINC {analyte.order_code})",
                    "resource": request,
                }
            ],
        }
    ]
    out["selectionBehavior"] = "at-most-one"
    return out


def order_card(
    finding: Finding, patient_id: str, drafts: AbstractSet[str], *, now: datetime
) -> dict[str, Any]:
    """A card for a finding on draft orders, with a suggestion to delete each draft it names.

    ``drafts`` holds the references (``MedicationRequest/id``) of the drafts that can be named;
    the suggestion's text is the draft's as the finding quotes it. Its uuid is the alert id the
    finding would have, so feedback and a later alert on the signed order agree.
    """
    alert = alert_of(finding, patient_id, now=now, trace_id="cds-hooks")
    out = card(alert)
    out["suggestions"] = [
        {
            "label": f"Remove the draft order: {item.value}"[:140],
            "uuid": deterministic_id("Suggestion", alert.id, item.ref),
            "isRecommended": False,
            "actions": [{"type": "delete", "description": f"Remove {item.value}", "resourceId": [item.ref]}],
        }
        for item in finding.inputs
        if item.ref in drafts
    ]
    if out["suggestions"]:
        out["selectionBehavior"] = "any"
    return out


def discharge_cards(state: PatientState, *, now: datetime, window: timedelta) -> list[dict[str, Any]]:
    """encounter-discharge: the stay's alerts still shown, then the medication review's findings.

    The stay starts at the encounter's start when the state has one, else ``window`` ago.
    """
    since = time_or(state.encounter.start if state.encounter else None, now - window)
    stay = [a for a in current_alerts(state, now=now, window=now - since) if a.severity != "info"]
    shown = {a.key for a in stay}
    review = [f for f in medication_review(state, at=now) if f.key not in shown]
    return [card(a) for a in stay] + [order_card(f, state.patient_id, frozenset(), now=now) for f in review]


def current_alerts(state: PatientState, *, now: datetime, window: timedelta) -> list[Alert]:
    """Alerts raised within ``window`` of ``now`` and not snoozed, most severe first."""
    shown = []
    for key, alert in state.alerts.items():
        if now - alert.raised_at > window:
            continue
        until = snoozed_until(state.snoozes, key, alert.rule_id)
        if until is not None and now < until:
            continue
        shown.append(alert)
    return sorted(shown, key=lambda a: (-SEVERITY_RANK[a.severity], -a.raised_at.timestamp()))


class Coding(BaseModel):
    """A FHIR Coding as CDS Hooks carries override reasons."""

    system: str | None = None
    code: str
    display: str | None = None


class OverrideReason(BaseModel):
    """Why a clinician overrode a card."""

    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=2000)


class AcceptedSuggestion(BaseModel):
    """A suggestion the clinician accepted."""

    id: str


class FeedbackItem(BaseModel):
    """One item of a CDS Hooks feedback request."""

    model_config = ConfigDict(extra="ignore")

    card: str = Field(min_length=1, max_length=128)
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: datetime
    overrideReason: OverrideReason | None = None
    acceptedSuggestions: list[AcceptedSuggestion] = Field(default_factory=list)


class FeedbackRequest(BaseModel):
    """The body of `POST /cds-services/{id}/feedback`."""

    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)


class HookRequest(BaseModel):
    """The parts of a CDS Hooks request this service reads."""

    model_config = ConfigDict(extra="ignore")

    hook: str
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = None
    fhirAuthorization: dict[str, Any] | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


def snoozed_by(state: PatientState, feedback: ClinicianFeedback) -> PatientState | None:
    """``state`` with the card's alert snoozed when the override asks for it, else None."""
    duration = SNOOZE.get(feedback.reason_code or "") if feedback.outcome == "overridden" else None
    if duration is None:
        return None
    key = next((k for k, alert in state.alerts.items() if alert.id == feedback.target_id), None)
    if key is None:
        return None
    return snooze(state, key, feedback.at + duration)
