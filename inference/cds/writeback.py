"""Alerts written back into the EHR: a FHIR DetectedIssue with its Provenance, an HL7 ORU^R01.

Pure functions. The decision-support stage publishes what these build to the outbound topics
(`ehr.outbound.fhir.v1`, `ehr.outbound.hl7v2.v1`) and the connectors deliver it, so no stage
but the connectors talks to the EHR. Everything is derived from the alert alone, with ids
and control ids taken from the alert id: a replayed alert produces the same bytes, and the
EHR's PUT (FHIR) or duplicate check on MSH-10 (HL7) keeps one copy.

The patient is named by the medical record number the EHR knows (`ChartIdentifier`, from
the Patient resource of the feed): our own Patient id is a one-way hash the EHR cannot
resolve. Evidence is named by our resource ids with their labels and values in the text, so
a reader of the EHR copy sees what the alert rests on even where the references do not
resolve there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kernel.cds_hooks import RULES_SYSTEM
from kernel.events import Alert, deterministic_id
from kernel.hl7v2.writer import components, escape, message, our_msh, segment, timestamp
from kernel.writeback import (
    CREATE_ACTIVITY,
    DEVICE_DISPLAY,
    ChartIdentifier,
    WritebackConfig,
    assembler_agent,
    patient_cx,
    patient_reference,
)

RULE_SYSTEM = RULES_SYSTEM
_SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}
_ABNORMAL = {"critical": "AA", "warning": "A", "info": ""}  # HL7 table 0078


def detected_issue_id(alert: Alert) -> str:
    """The DetectedIssue id of ``alert`` (the alert id: one resource per alert)."""
    return alert.id


def _evidence_text(alert: Alert) -> str:
    lines = [alert.detail, ""]
    for item in alert.inputs:
        when = item.at.isoformat(timespec="minutes") if item.at else "time not recorded"
        lines.append(f"- {item.label}: {item.value} at {when}")
    if alert.thresholds:
        lines += ["", f"Thresholds: {alert.thresholds}."]
    lines += ["", f"Rule {alert.rule_id} v{alert.rule_version}. Source: {alert.citation}"]
    return "\n".join(lines).strip()


def detected_issue(alert: Alert, patient: ChartIdentifier | None) -> dict[str, Any]:
    """A FHIR R4 DetectedIssue for ``alert``: code, severity, inputs, thresholds and citation."""
    return {
        "resourceType": "DetectedIssue",
        "id": detected_issue_id(alert),
        "status": "final",
        "code": {
            "coding": [{"system": RULE_SYSTEM, "code": alert.rule_id}],
            "text": alert.summary,
        },
        "severity": _SEVERITY[alert.severity],
        "patient": patient_reference(alert.patient_id, patient),
        "identifiedDateTime": (alert.effective or alert.raised_at).isoformat(),
        "author": {"display": DEVICE_DISPLAY},
        "implicated": [{"reference": ref} for ref in alert.evidence],
        "evidence": [{"detail": [{"reference": ref} for ref in alert.evidence]}] if alert.evidence else [],
        "detail": _evidence_text(alert),
    }


def provenance(alert: Alert) -> dict[str, Any]:
    """The Provenance of ``alert``'s DetectedIssue: the rule and version, the sources it read."""
    return {
        "resourceType": "Provenance",
        "id": deterministic_id("Provenance", "DetectedIssue", alert.id),
        "target": [{"reference": f"DetectedIssue/{detected_issue_id(alert)}"}],
        "recorded": alert.raised_at.isoformat(),
        "activity": CREATE_ACTIVITY,
        "agent": [assembler_agent(f"{DEVICE_DISPLAY}: rule {alert.rule_id} v{alert.rule_version}")],
        "entity": [{"role": "source", "what": {"reference": ref}} for ref in alert.evidence],
    }


def fhir_resources(alert: Alert, patient: ChartIdentifier | None) -> list[dict[str, Any]]:
    """What FHIR write-back sends for ``alert``: the DetectedIssue, then its Provenance."""
    return [detected_issue(alert, patient), provenance(alert)]


def control_id(alert: Alert) -> str:
    """MSH-10 of ``alert``'s ORU (20 characters, the HL7 2.5.1 limit), the same on every replay."""
    return deterministic_id("ORU", alert.id)[:20]


def oru_r01(
    alert: Alert,
    patient: ChartIdentifier | None,
    *,
    sending_application: str = "CLINSTREAM",
    receiving_application: str = "",
    receiving_facility: str = "",
) -> bytes:
    """An HL7 v2.5.1 ORU^R01 carrying ``alert`` as a text result, with its evidence as NTEs.

    OBR-3 (filler order number) is the alert id, OBX-3 the rule, OBX-5 the summary, OBX-8 the
    abnormal flag (AA critical, A warning), NTE segments the inputs, thresholds and citation.
    """
    pid3 = patient_cx(alert.patient_id, patient)
    rule = components([alert.rule_id, f"{alert.rule_id} v{alert.rule_version}", "L"])
    observed = timestamp(alert.effective or alert.raised_at)
    segments = [
        our_msh(
            sending_application,
            receiving_application,
            receiving_facility,
            at=alert.raised_at,
            message_type=("ORU", "R01", "ORU_R01"),
            control_id=control_id(alert),
        ),
        segment("PID", ["1", "", pid3]),
        segment(
            "OBR",
            ["1", "", components([alert.id, sending_application]), rule, "", "", observed]
            + [""] * 14
            + [timestamp(alert.raised_at), "", "", "F"],
        ),
        segment(
            "OBX",
            [
                *("1", "TX", rule, "1", escape(alert.summary), "", "", _ABNORMAL[alert.severity]),
                *("", "", "F", "", "", observed),
            ],
        ),
    ]
    for n, line in enumerate((line for line in _evidence_text(alert).splitlines() if line.strip()), 1):
        segments.append(segment("NTE", [str(n), "L", escape(line)]))
    return message(segments)


@dataclass(frozen=True, slots=True)
class Outbound:
    """The payloads of one alert for the outbound topics."""

    fhir: list[bytes]
    hl7: list[bytes]


def outbound(alert: Alert, patient: ChartIdentifier | None, config: WritebackConfig) -> Outbound:
    """What ``alert`` sends on each channel ``config`` switched on (nothing on the others)."""
    fhir = (
        [json.dumps(r, separators=(",", ":")).encode() for r in fhir_resources(alert, patient)]
        if config.fhir
        else []
    )
    hl7 = (
        [
            oru_r01(
                alert,
                patient,
                receiving_application=config.receiving_application,
                receiving_facility=config.receiving_facility,
            )
        ]
        if config.hl7
        else []
    )
    return Outbound(fhir, hl7)
