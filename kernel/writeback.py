"""What alert and draft write-back share: the patient as the EHR knows them, the Provenance
agent, and which channels a deployment switched on. Pure.

Our Patient id is a one-way hash the EHR cannot resolve, so write-back names the patient by
the medical record number of the feed's Patient resource (`ChartIdentifier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from kernel.hl7v2.writer import components
from kernel.rendering import first_code
from kernel.settings import CdsSettings, NotesSettings

DEVICE_DISPLAY = "clinstream decision support"
"""How clinstream names itself as the author of what it writes into the EHR."""
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


class ChartIdentifier(BaseModel):
    """The patient's medical record number as the EHR knows it: what write-back names."""

    value: str
    system: str = ""
    authority: str = ""


def chart_identifier(res: dict[str, Any]) -> ChartIdentifier | None:
    """The MR identifier (else the first that is not an SSN or licence) of a Patient."""
    usable = []
    for ident in res.get("identifier", []):
        kind = first_code(ident.get("type"))
        if ident.get("value") and kind not in ("SS", "DL"):
            usable.append((kind != "MR", ident))
    if not usable:
        return None
    ident = min(usable, key=lambda pair: pair[0])[1]
    return ChartIdentifier(
        value=str(ident["value"]),
        system=str(ident.get("system", "")),
        authority=str((ident.get("assigner") or {}).get("display", "")),
    )


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


def patient_cx(patient_id: str, patient: ChartIdentifier | None) -> str:
    """PID-3 of a message we send: the MR identifier the EHR knows, else our Patient id (``PI``)."""
    if patient is None:
        return components([patient_id, "", "", "CLINSTREAM", "PI"])
    return components([patient.value, "", "", patient.authority, "MR"])
