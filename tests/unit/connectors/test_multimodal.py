"""Imaging and genomics: pydicom's own DICOM test files through `POST /dicom/studies`, imaging
reports and genetic results in HL7 v2 ORU, and how the index reads them."""

from pathlib import Path
from zoneinfo import ZoneInfo

import pydicom
import pytest
from starlette.testclient import TestClient

from clinstream.http import build_app
from connectors.fhir_server import FhirIngress
from connectors.security import Authenticator
from kernel.audit_kafka import MemoryAuditLog
from kernel.events import DeadLetter, FhirInbound, Topics, patient_key
from kernel.rendering import render
from kernel.settings import HttpSettings
from stream.fhir_input import normalize_fhir
from stream.imaging import study_id
from stream.normalize import normalize_hl7
from stream.validation import validate
from tests.fakes import MemorySink

DICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
TOPICS = Topics()
TOKEN = "dicom-test-token"
UTC = ZoneInfo("UTC")


@pytest.fixture
def env():
    sink = MemorySink()
    settings = HttpSettings()
    app = build_app(
        Authenticator(TOKEN, settings), FhirIngress(sink, TOPICS, settings).routes(), audit=MemoryAuditLog()
    )
    return TestClient(app), sink


def _post(client, body, content_type="application/dicom", query=""):
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    return client.post(f"/dicom/studies{query}", content=body, headers=headers)


def test_a_dicom_file_becomes_an_imaging_study_keyed_like_the_hl7_feed(env):
    client, sink = env
    data = (DICOM_FILES / "CT_small.dcm").read_bytes()
    response = _post(client, data, query="?issuer=MERCY")
    assert response.status_code == 200
    uid = pydicom.dcmread(DICOM_FILES / "CT_small.dcm").StudyInstanceUID
    assert response.json()["studies"][0]["reference"] == f"ImagingStudy/{study_id(uid)}"
    [(_, value, _, _)] = sink.on(TOPICS.inbound_fhir)
    [group] = normalize_fhir(FhirInbound.model_validate_json(value))
    assert group.patient_id == patient_key("MERCY", "1CT1")  # linked to the HL7 patient of that MRN
    study = next(r for r in group.resources if r["resourceType"] == "ImagingStudy")
    validate(study)
    assert study["modality"][0]["code"] == "CT"
    assert study["started"] == "2004-01-19T07:27:30-05:00"  # StudyDate, StudyTime, TimezoneOffsetFromUTC
    assert study["numberOfInstances"] == 1
    [(_, text)] = render(study)
    assert text.startswith("Imaging:")
    assert "CT" in text
    assert "2004-01-19 07:27" in text


def test_multipart_parts_are_grouped_by_study(env):
    client, sink = env
    files = ["MR_small.dcm", "CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm"]  # last two: one study
    boundary = "b0undary"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + (DICOM_FILES / f).read_bytes()
        + b"\r\n"
        for f in files
    )
    body += f"--{boundary}--\r\n".encode()
    response = _post(
        client, body, f'multipart/related; type="application/dicom"; boundary={boundary}', "?issuer=MERCY"
    )
    assert response.status_code == 200
    assert response.json()["instances"] == 4
    assert sorted(s["instances"] for s in response.json()["studies"]) == [1, 1, 2]
    assert len(sink.on(TOPICS.inbound_fhir)) == 3


@pytest.mark.parametrize(
    ("body", "content_type", "query", "status"),
    [
        (b"not dicom at all", "application/dicom", "?issuer=MERCY", 400),
        ((DICOM_FILES / "CT_small.dcm").read_bytes(), "application/dicom", "", 422),  # no issuer anywhere
        ((DICOM_FILES / "CT_small.dcm").read_bytes(), "application/octet-stream", "?issuer=MERCY", 415),
        (b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n", "multipart/related; boundary=x", "", 400),
    ],
)
def test_bad_dicom_input_is_refused_with_an_outcome_and_a_dead_letter(env, body, content_type, query, status):
    client, sink = env
    response = _post(client, body, content_type, query)
    assert response.status_code == status
    assert response.json()["resourceType"] == "OperationOutcome"
    assert not sink.on(TOPICS.inbound_fhir)
    if status != 415:
        [(_, value, _, _)] = sink.on(TOPICS.deadletter)
        assert DeadLetter.model_validate_json(value).stage == "connectors.fhir"


def test_unauthenticated_dicom_is_refused(env):
    client, _ = env
    assert (
        client.post("/dicom/studies", content=b"x", headers={"Content-Type": "application/dicom"}).status_code
        == 401
    )


CT_UID = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
RADIOLOGY = "\r".join(
    [
        "MSH|^~\\&|RIS|MERCY|CS|CS|20250310101500||ORU^R01|RAD-1|P|2.5.1",
        "PID|1||100001^^^MERCY^MR||DOE^JANE||19580312|F",
        "OBR|1|ORD9|ACC77|71250^CT chest without contrast^CPT|||20250310093000"
        "|||||||||||||||20250310101000||CT|F",
        "OBX|1|TX|18782-3^Radiology Study observation^LN||No pulmonary embolism. 6 mm nodule right"
        " upper lobe.||||||F",
        f"ZDS|{CT_UID}^RIS^Application^DICOM",
    ]
)
GENETIC = "\r".join(
    [
        "MSH|^~\\&|GENLAB|MERCY|CS|CS|20250311120000||ORU^R01|GEN-1|P|2.5.1",
        "PID|1||100001^^^MERCY^MR||DOE^JANE||19580312|F",
        "OBR|1|ORD10|GEN55|81479^Hereditary cancer panel^CPT|||20250311090000"
        "|||||||||||||||20250311115000||GE|F",
        "OBX|1|CWE|48018-6^Gene studied^LN|1|1100^BRCA1^HGNC||||||F",
        "OBX|2|ST|48004-6^DNA change (c.HGVS)^LN|1|c.68_69delAG||||||F",
        "OBX|3|ST|48005-3^Amino acid change (pHGVS)^LN|1|p.Glu23fs||||||F",
        "OBX|4|CWE|53034-5^Allelic state^LN|1|LA6706-1^Heterozygous^LN||||||F",
        "OBX|5|CWE|53037-8^Genetic variation clinical significance^LN|1|LA6668-3^Pathogenic^LN||||||F",
        "OBX|6|CWE|48018-6^Gene studied^LN|2|1101^BRCA2^HGNC||||||F",
        "OBX|7|ST|48004-6^DNA change (c.HGVS)^LN|2|c.5946delT||||||F",
    ]
)


def test_an_imaging_report_names_its_study_with_the_same_id_as_the_dicom_study():
    result = normalize_hl7(RADIOLOGY, tz=UTC)
    [report] = [r for r in result.resources if r["resourceType"] == "DiagnosticReport"]
    [study] = [r for r in result.resources if r["resourceType"] == "ImagingStudy"]
    assert study["id"] == study_id(CT_UID)  # the CT_small.dcm study above
    assert report["imagingStudy"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert report["category"][0]["coding"][0]["code"] == "CT"
    text = " ".join(t for r in result.resources for _, t in render(r))
    assert "6 mm nodule" in text
    assert "Imaging: CT chest without contrast" in text


def test_genetic_results_become_searchable_variant_observations():
    result = normalize_hl7(GENETIC, tz=UTC)
    found = [r for r in result.resources if "genomics-reporting" in str(r.get("meta", {}))]
    assert len(found) == 2
    brca1, brca2 = found
    for variant in found:
        validate(variant)
    [(_, text)] = render(brca1)
    assert "Gene studied BRCA1" in text
    assert "c.68_69delAG" in text
    assert "p.Glu23fs" in text
    assert "Pathogenic" in text
    assert "BRCA2" in " ".join(t for _, t in render(brca2))
    assert len(brca1["derivedFrom"]) == 5
    lines = [r for r in result.resources if r["resourceType"] == "Observation" and r not in found]
    assert all(any(c["coding"][0]["code"] == "GE" for c in r["category"]) for r in lines)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about each damaged value
def test_damaged_dicom_files_are_refused_never_an_internal_error():
    """pydicom decodes elements lazily: damage inside an element (an unknown VR, a length that
    does not fit) surfaced as a 500 when the header was read. Seeded byte mutations of a real
    file (pydicom's CT_small) must each give a header or our 400/422."""
    import random

    from pydicom.data import get_testdata_file

    from connectors import dicom_files
    from connectors.errors import FhirInputError

    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    rnd = random.Random(24)
    refused = 0
    for _ in range(1500):
        damaged = bytearray(data[: rnd.randrange(len(data))] if rnd.random() < 0.5 else data)
        for _ in range(rnd.randrange(1, 12)):
            damaged[rnd.randrange(len(damaged))] = rnd.randrange(256)
        try:
            dicom_files.transactions([dicom_files.header(bytes(damaged), 0)], "MERCY")
        except FhirInputError as exc:
            assert exc.status in (400, 422)
            refused += 1
    assert refused > 100
