"""Imaging: ImagingStudy from DICOM headers and from HL7 v2 imaging reports (pure).

A study has one id wherever it is seen, ``deterministic_id("ImagingStudy", StudyInstanceUID)``,
so the study the modality sends (DICOM, `connectors.dicom`) and the radiologist's report about
it (ORU with the study's UID in a ZDS segment or an OBX coded DCM 113014) meet in one
resource, and the report's ``imagingStudy`` points at it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stream.events import deterministic_id
from stream.hl7v2 import Message, component_of

DCM = "http://dicom.nema.org/resources/ontology/DCM"
STUDY_UID_CODE = "113014"  # DCM "Study Instance UID"

Resource = dict[str, Any]


def study_id(uid: str) -> str:
    """The ImagingStudy id of a Study Instance UID."""
    return deterministic_id("ImagingStudy", uid.strip())


def study_uids(msg: Message) -> dict[int, str]:
    """Study Instance UIDs an ORU names, by the index of the OBR they follow."""
    found: dict[int, str] = {}
    index = -1
    for seg in msg.segments:
        if seg.name == "OBR":
            index += 1
        elif index >= 0 and seg.name == "ZDS":
            uid = component_of(seg.value(1), msg.seps, 1).strip()
            if uid:
                found.setdefault(index, uid)
        elif index >= 0 and seg.name == "OBX":
            code = component_of(seg.value(3), msg.seps, 1)
            if (
                code == STUDY_UID_CODE
                or component_of(seg.value(3), msg.seps, 2).lower() == "study instance uid"
            ):
                uid = component_of(seg.value(5), msg.seps, 1).strip()
                if uid:
                    found.setdefault(index, uid)
    return found


def _uid_identifier(uid: str) -> dict[str, Any]:
    return {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}


def from_report(uid: str, report: Mapping[str, Any]) -> Resource:
    """The ImagingStudy an imaging report is about (what the report knows of it)."""
    study: Resource = {
        "resourceType": "ImagingStudy",
        "id": study_id(uid),
        "identifier": [_uid_identifier(uid)],
        "status": "available",
        "subject": dict(report["subject"]),
    }
    if report.get("effectiveDateTime"):
        study["started"] = report["effectiveDateTime"]
    code = report.get("code") or {}
    if code.get("text") or code.get("coding"):
        study["procedureCode"] = [code]
    if report.get("encounter"):
        study["encounter"] = dict(report["encounter"])
    return study


def link_reports(reports: Sequence[Resource], uids: Mapping[int, str]) -> list[Resource]:
    """Point each report at its study; the studies, once each."""
    studies: dict[str, Resource] = {}
    for index, uid in uids.items():
        if index >= len(reports):
            continue
        report = reports[index]
        study = studies.setdefault(uid, from_report(uid, report))
        report["imagingStudy"] = [{"reference": f"ImagingStudy/{study['id']}"}]
    return list(studies.values())


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
        "identifier": [_uid_identifier(uid)],
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
