"""ImagingStudy ids and ImagingStudy from DICOM headers (pure).

A study has one id wherever it is seen, ``deterministic_id("ImagingStudy", StudyInstanceUID)``,
so the study the modality sends (DICOM, `connectors.dicom_files`) and the radiologist's report
about it (HL7 v2, `stream.imaging`) meet in one resource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kernel.events import deterministic_id

Resource = dict[str, Any]


DCM = "http://dicom.nema.org/resources/ontology/DCM"


def study_id(uid: str) -> str:
    """The ImagingStudy id of a Study Instance UID."""
    return deterministic_id("ImagingStudy", uid.strip())


def uid_identifier(uid: str) -> dict[str, Any]:
    return {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}


def _dicom_datetime(day: str, time: str, offset: str) -> str | None:
    """A FHIR dateTime: with the time only when DICOM gives the UTC offset (FHIR requires one)."""
    day = day.strip()
    if len(day) != 8 or not day.isdigit():
        return None
    text = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    time, offset = time.strip().split(".")[0], offset.strip()
    if (
        len(time) >= 4
        and time[:4].isdigit()
        and len(offset) == 5
        and offset[0] in "+-"
        and offset[1:].isdigit()
    ):
        seconds = time[4:6] if len(time) >= 6 and time[4:6].isdigit() else "00"
        text += f"T{time[:2]}:{time[2:4]}:{seconds}{offset[:3]}:{offset[3:]}"
    return text


def from_dicom(instances: Sequence[Mapping[str, str]], subject: str) -> Resource:
    """One ImagingStudy from the headers of its instances (all of one study), series in order.

    Each instance is a mapping of DICOM keywords (StudyInstanceUID, SeriesInstanceUID,
    SOPInstanceUID, SOPClassUID, Modality, StudyDate, StudyTime, StudyDescription,
    SeriesDescription, SeriesNumber, InstanceNumber, BodyPartExamined, AccessionNumber,
    TimezoneOffsetFromUTC).
    """
    first = instances[0]
    uid = first["StudyInstanceUID"]
    series: dict[str, Resource] = {}
    for inst in instances:
        s = series.setdefault(
            inst["SeriesInstanceUID"],
            {
                "uid": inst["SeriesInstanceUID"],
                "modality": {"system": DCM, "code": inst.get("Modality") or "OT"},
                "instance": [],
            },
        )
        if inst.get("SeriesNumber", "").strip().lstrip("-").isdigit():
            s["number"] = int(inst["SeriesNumber"])
        if inst.get("SeriesDescription"):
            s["description"] = inst["SeriesDescription"]
        if inst.get("BodyPartExamined"):
            s["bodySite"] = {"system": "http://snomed.info/sct", "display": inst["BodyPartExamined"]}
        if any(i["uid"] == inst["SOPInstanceUID"] for i in s["instance"]):
            continue
        entry: Resource = {
            "uid": inst["SOPInstanceUID"],
            "sopClass": {
                "system": "urn:ietf:rfc:3986",
                "code": f"urn:oid:{inst.get('SOPClassUID') or '1.2'}",
            },
        }
        if inst.get("InstanceNumber", "").strip().isdigit():
            entry["number"] = int(inst["InstanceNumber"])
        s["instance"].append(entry)
    for s in series.values():
        s["numberOfInstances"] = len(s["instance"])
        s["instance"].sort(key=lambda i: (i.get("number", 0), i["uid"]))
    ordered = sorted(series.values(), key=lambda s: (s.get("number", 0), s["uid"]))
    study: Resource = {
        "resourceType": "ImagingStudy",
        "id": study_id(uid),
        "identifier": [uid_identifier(uid)],
        "status": "available",
        "subject": {"reference": subject},
        "modality": [dict(m) for m in {s["modality"]["code"]: s["modality"] for s in ordered}.values()],
        "numberOfSeries": len(ordered),
        "numberOfInstances": sum(s["numberOfInstances"] for s in ordered),
        "series": ordered,
    }
    if first.get("AccessionNumber"):
        study["identifier"].append(
            {
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
                },
                "value": first["AccessionNumber"],
            }
        )
    started = _dicom_datetime(
        first.get("StudyDate", ""), first.get("StudyTime", ""), first.get("TimezoneOffsetFromUTC", "")
    )
    if started:
        study["started"] = started
    if first.get("StudyDescription"):
        study["description"] = first["StudyDescription"]
    return study
