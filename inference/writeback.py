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
from datetime import datetime
from typing import Any

from inference.cards import SOURCE_LABEL
from inference.state import ChartIdentifier
from stream.events import Alert, deterministic_id
from stream.hl7v2 import Separators, escape
from stream.settings import CdsSettings, NotesSettings

RULE_SYSTEM = "https://clinstream.example/rules"
DEVICE_DISPLAY = SOURCE_LABEL
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_SEVERITY = {"critical": "high", "warning": "moderate", "info": "low"}
_ABNORMAL = {"critical": "AA", "warning": "A", "info": ""}  # HL7 table 0078
_SEPS = Separators()


def detected_issue_id(alert: Alert) -> str:
    """The DetectedIssue id of ``alert`` (the alert id: one resource per alert)."""
    return alert.id


def patient_reference(patient_id: str, patient: ChartIdentifier | None) -> dict[str, Any]:
    """The patient as the EHR knows them: the MR identifier, else our Patient reference."""
    if patient is None:
        return {"reference": f"Patient/{patient_id}"}
    ident: dict[str, Any] = {
        "type": {"coding": [{"system": _V2_0203, "code": "MR"}]},
        "value": patient.value,
    }
    if patient.system:
        ident["system"] = patient.system
    if patient.authority:
        ident["assigner"] = {"display": patient.authority}
    return {"identifier": ident}


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


CREATE_ACTIVITY: dict[str, Any] = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}]
}


def assembler_agent(who: str) -> dict[str, Any]:
    """A Provenance agent: clinstream, as the assembler of what it wrote (``who`` names the rule or model)."""
    return {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "assembler",
                }
            ]
        },
        "who": {"display": who},
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


def _ts(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S%z")


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
    s = _SEPS
    f = s.field

    def e(text: str) -> str:
        return escape(text, s)

    if patient is not None:
        pid3 = s.component.join([e(patient.value), "", "", e(patient.authority), "MR"])
    else:
        pid3 = s.component.join([e(alert.patient_id), "", "", "CLINSTREAM", "PI"])
    rule = s.component.join([e(alert.rule_id), e(f"{alert.rule_id} v{alert.rule_version}"), "L"])
    observed = _ts(alert.effective or alert.raised_at)
    segments = [
        f.join(
            [
                "MSH",
                s.encoding_characters,
                e(sending_application),
                e(sending_application),
                e(receiving_application),
                e(receiving_facility),
                _ts(alert.raised_at),
                "",
                s.component.join(["ORU", "R01", "ORU_R01"]),
                control_id(alert),
                "P",
                "2.5.1",
            ]
        ),
        f.join(["PID", "1", "", pid3]),
        f.join(
            ["OBR", "1", "", s.component.join([alert.id, e(sending_application)]), rule, "", "", observed]
            + [""] * 14
            + [_ts(alert.raised_at), "", "", "F"]
        ),
        f.join(
            [
                "OBX",
                "1",
                "TX",
                rule,
                "1",
                e(alert.summary),
                "",
                "",
                _ABNORMAL[alert.severity],
                "",
                "",
                "F",
                "",
                "",
                observed,
            ]
        ),
    ]
    for n, line in enumerate((line for line in _evidence_text(alert).splitlines() if line.strip()), 1):
        segments.append(f.join(["NTE", str(n), "L", e(line)]))
    return ("\r".join(segments) + "\r").encode("utf-8")


@dataclass(frozen=True, slots=True)
class WritebackConfig:
    """Which write-back channels a deployment switched on, and the HL7 receiver to name."""

    fhir: bool = False
    hl7: bool = False
    receiving_application: str = ""
    receiving_facility: str = ""


NO_WRITEBACK = WritebackConfig()


def writeback_from(settings: CdsSettings | NotesSettings) -> WritebackConfig:
    """The write-back channels ``settings`` switch on."""
    app, _, facility = settings.writeback_hl7_receiver.partition("^")
    return WritebackConfig(
        fhir=settings.writeback_fhir,
        hl7=settings.writeback_hl7,
        receiving_application=app,
        receiving_facility=facility,
    )


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
