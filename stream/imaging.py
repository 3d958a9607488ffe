"""Imaging reports in HL7 v2: the ImagingStudy a report is about (pure).

A study has one id wherever it is seen (`kernel.imaging.study_id`), so the study the modality
sends (DICOM, `connectors.dicom_files`) and the radiologist's report about it (ORU with the
study's UID in a ZDS segment or an OBX coded DCM 113014) meet in one resource, and the
report's ``imagingStudy`` points at it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kernel.hl7v2.parser import Message, component_of
from kernel.imaging import Resource, study_id, uid_identifier

STUDY_UID_CODE = "113014"  # DCM "Study Instance UID"


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


def from_report(uid: str, report: Mapping[str, Any]) -> Resource:
    """The ImagingStudy an imaging report is about (what the report knows of it)."""
    study: Resource = {
        "resourceType": "ImagingStudy",
        "id": study_id(uid),
        "identifier": [uid_identifier(uid)],
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
