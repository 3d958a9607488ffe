"""DICOM instances in (a STOW-RS style `POST /dicom/studies`): headers → Patient + ImagingStudy.

Only the header is read (pydicom, ``stop_before_pixels``); pixel data stays in the PACS. The
instances of one request are grouped by study, and each study goes on as one FHIR transaction
(a Patient carrying the DICOM Patient ID as an MRN of its issuer, and the ImagingStudy) to the
normalizer, which keys it by the same patient key as the HL7 feed.
"""

from __future__ import annotations

import email.parser
import email.policy
import struct
from collections.abc import Sequence
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.errors import BytesLengthException, InvalidDicomError

from connectors.errors import FhirInputError
from connectors.fhir_ingress import Issue
from kernel.events import deterministic_id
from kernel.imaging import from_dicom

KEYWORDS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Modality",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "BodyPartExamined",
    "AccessionNumber",
    "PatientID",
    "IssuerOfPatientID",
    "TimezoneOffsetFromUTC",
)
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID")


def _refuse(status: int, code: Any, text: str) -> FhirInputError:
    return FhirInputError(status, [Issue(code, text)])


def parts(body: bytes, content_type: str) -> list[bytes]:
    """The DICOM files of a request: the body itself, or each part of a multipart/related body."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/dicom":
        return [body]
    if kind != "multipart/related":
        raise _refuse(415, "not-supported", "send application/dicom or multipart/related DICOM parts")
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    found = [
        p.get_payload(decode=True)
        for p in message.iter_parts()
        if p.get_content_type() == "application/dicom"
    ]
    files = [f for f in found if isinstance(f, bytes)]
    if not files:
        raise _refuse(400, "invalid", "no application/dicom part in the multipart body")
    return files


def header(data: bytes, position: int) -> dict[str, str]:
    """The keywords an ImagingStudy needs from one DICOM file (pixel data not read)."""
    try:
        dataset = dcmread(BytesIO(data), stop_before_pixels=True)
        # pydicom decodes an element when it is read, so a damaged one fails here, not above:
        # an unknown value representation (NotImplementedError), a length that does not fit it
        # (BytesLengthException, struct.error).
        out = {k: str(dataset.get(k, "") or "").strip() for k in KEYWORDS}
    except (
        InvalidDicomError,
        BytesLengthException,
        NotImplementedError,
        struct.error,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        OSError,
    ) as exc:
        raise _refuse(
            400, "invalid", f"part {position} is not a readable DICOM file ({type(exc).__name__})"
        ) from None
    missing = [k for k in REQUIRED if not out[k]]
    if missing:
        raise _refuse(422, "required", f"part {position} lacks {', '.join(missing)}")
    return out


def transactions(
    instances: Sequence[dict[str, str]], default_issuer: str | None
) -> list[list[dict[str, Any]]]:
    """One list of resources (Patient, ImagingStudy) per study among ``instances``."""
    studies: dict[str, list[dict[str, str]]] = {}
    for inst in instances:
        studies.setdefault(inst["StudyInstanceUID"], []).append(inst)
    out = []
    for group in studies.values():
        first = group[0]
        issuer = first["IssuerOfPatientID"] or default_issuer
        if not issuer:
            raise _refuse(
                422,
                "required",
                "IssuerOfPatientID (0010,0021) is missing: give the assigning authority as ?issuer=",
            )
        if any(i["PatientID"] != first["PatientID"] for i in group):
            raise _refuse(422, "invalid", "instances of one study name different patients")
        patient_id = deterministic_id("DicomPatient", issuer, first["PatientID"])
        patient = {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [
                {
                    "type": {
                        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                    },
                    "value": first["PatientID"],
                    "assigner": {"display": issuer},
                }
            ],
        }
        out.append([patient, from_dicom(group, f"Patient/{patient_id}")])
    return out
