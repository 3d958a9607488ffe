"""Orders, pharmacy, scheduling and result attachments: third-party samples and focused messages."""

import base64
import importlib.util
import sys
from zoneinfo import ZoneInfo

import pytest

from kernel.errors import MappingError
from kernel.hl7v2.parser import decode_payload, parse_message
from kernel.quality import DATA_ABSENT_REASON
from stream.adt import MOTHERS_MAIDEN_NAME
from stream.coverage import unmapped, z_segments
from stream.normalize import normalize_hl7
from tests.conftest import REPO

UTC = ZoneInfo("UTC")


def _sample(corpora, name):
    path = corpora / "hl7v2" / "microsoft-fhir-converter" / f"{name}.hl7"
    return decode_payload(path.read_bytes())


def _of(resources, kind):
    return [r for r in resources if r["resourceType"] == kind]


def test_orm_order_becomes_a_service_request(corpora):
    result = normalize_hl7(_sample(corpora, "ORM-O01-01"), tz=UTC)
    [order] = _of(result.resources, "ServiceRequest")
    assert order["status"] == "active"  # ORC-1 NW, ORC-5 SC (scheduled)
    assert order["intent"] == "order"
    assert order["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "24725-4",
        "display": "CT Head",
    }
    assert [(i["type"]["coding"][0]["code"], i["value"]) for i in order["identifier"]] == [
        ("PLAC", "1101"),
        ("FILL", "1201"),
    ]
    assert order["authoredOn"] == "2021-10-20T11:26:00+02:15"
    assert order["subject"]["reference"] == f"Patient/{result.patient_id}"


def test_status_change_of_an_order_overwrites_it(corpora):
    text = _sample(corpora, "ORM-O01-01")
    new = normalize_hl7(text, tz=UTC)
    cancelled = normalize_hl7(text.replace("ORC|NW|", "ORC|CA|").replace("||SC||", "||CA||"), tz=UTC)
    [a], [b] = _of(new.resources, "ServiceRequest"), _of(cancelled.resources, "ServiceRequest")
    assert a["id"] == b["id"]
    assert (a["status"], b["status"]) == ("active", "revoked")


def test_pharmacy_order_dose_route_and_dispense(corpora):
    result = normalize_hl7(_sample(corpora, "RDS-O13-01"), tz=UTC)
    [request] = _of(result.resources, "MedicationRequest")
    [dispense] = _of(result.resources, "MedicationDispense")
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "01151327"
    assert request["medicationCodeableConcept"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/ndc"
    assert request["dosageInstruction"][0]["text"] == "1 tablet by oral route 2 times daily."
    assert request["dosageInstruction"][0]["route"]["coding"][0]["code"] == "PO"  # the RXR after RXE
    assert dispense["authorizingPrescription"] == [{"reference": f"MedicationRequest/{request['id']}"}]
    assert dispense["quantity"]["value"] == 10
    assert dispense["whenHandedOver"] == "2020-12-12"


def test_two_drugs_under_one_order_number_stay_two(corpora):
    result = normalize_hl7(_sample(corpora, "RDS-O13-02"), tz=UTC)
    requests = _of(result.resources, "MedicationRequest")
    assert len(requests) == 2
    assert len({r["id"] for r in requests}) == 2
    dispenses = _of(result.resources, "MedicationDispense")
    assert {d["authorizingPrescription"][0]["reference"] for d in dispenses} == {
        f"MedicationRequest/{r['id']}" for r in requests
    }


RAS = (
    "MSH|^~\\&|MAR|MERCY|EHR|MERCY|202503061000||RAS^O17^RAS_O17|MAR0001|P|2.5.1\r"
    "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    "ORC|RE|RX100^MAR|RX100F^PHARM\r"
    "RXA|0|1|202503060955|202503061000|310965^Ibuprofen 200 MG Oral Tablet^RXNORM|400|mg^mg^UCUM"
    "|||||||||||||CP\r"
    "RXR|PO^Oral^HL70162\r"
)


def test_administration_with_dose_route_and_period():
    result = normalize_hl7(RAS, tz=UTC)
    [given] = _of(result.resources, "MedicationAdministration")
    assert given["status"] == "completed"
    assert given["effectivePeriod"] == {
        "start": "2025-03-06T09:55:00+00:00",
        "end": "2025-03-06T10:00:00+00:00",
    }
    assert given["dosage"]["dose"] == {
        "value": 400,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert given["dosage"]["route"]["coding"][0]["code"] == "PO"
    assert given["medicationCodeableConcept"]["coding"][0]["system"] == (
        "http://www.nlm.nih.gov/research/umls/rxnorm"
    )


def test_administration_without_a_time_is_dropped_with_a_located_issue():
    result = normalize_hl7(RAS.replace("|202503060955|202503061000|", "|||"), tz=UTC)
    assert "MedicationAdministration" not in {r["resourceType"] for r in result.resources}
    assert [(i.severity, i.code) for i in result.issues] == [("error", "dropped-content")]
    assert "RXA-3" in result.issues[0].text


def test_appointment_booked_then_cancelled(corpora):
    booked = normalize_hl7(_sample(corpora, "SIU-S12-01"), tz=UTC)
    [appointment] = _of(booked.resources, "Appointment")
    assert appointment["status"] == "booked"
    assert appointment["start"] == "2021-09-24T09:30:00+02:15"
    assert appointment["end"] == "2021-09-24T10:20:00+02:15"
    assert appointment["reasonCode"][0]["coding"][0]["code"] == "EMERGENCY"
    assert appointment["participant"][0]["actor"]["reference"] == f"Patient/{booked.patient_id}"
    assert {p["actor"].get("display") for p in appointment["participant"][1:]} >= {"Robert GE"}
    cancelled = normalize_hl7(_sample(corpora, "SIU-S15-01"), tz=UTC)
    [again] = _of(cancelled.resources, "Appointment")
    assert again["status"] == "cancelled"
    assert again["id"] == appointment["id"]  # same filler appointment id (SCH-2)


def test_specimen_links_to_its_order(corpora):
    result = normalize_hl7(_sample(corpora, "LAB-ORU-1"), tz=UTC)
    specimens = {f"Specimen/{s['id']}" for s in _of(result.resources, "Specimen")}
    assert specimens
    for report in _of(result.resources, "DiagnosticReport"):
        assert report["basedOn"][0]["reference"].startswith("ServiceRequest/")
        assert {r["reference"] for r in report.get("specimen", [])} <= specimens
    linked = {
        r["reference"] for sr in _of(result.resources, "ServiceRequest") for r in sr.get("specimen", [])
    }
    assert linked
    assert linked <= specimens


ORU = (
    "MSH|^~\\&|RIS|MERCY|EHR|MERCY|202503061000||ORU^R01^ORU_R01|RAD0001|P|2.5.1\r"
    "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    "OBR|1|RAD1|RAD1F|71045^XR chest 1 view^C4|||202503060900|||||||||||||||||F\r"
    "OBX|1|TX|||No acute cardiopulmonary process.||||||F\r"
    "OBX|2|TX|||Heart size normal.||||||F\r"
    "OBX|3|ED|IMG^Image^L||^IM^JPEG^Base64^aGVsbG8=||||||F\r"
    "OBX|4|SN|2160-0^Creatinine^LN||^1^-^3|mg/dL^mg/dL^UCUM|||||F\r"
    "NTE|1||Sample slightly haemolysed\r"
)


def test_report_text_attachment_range_and_note():
    result = normalize_hl7(ORU, tz=UTC)
    [report] = _of(result.resources, "DiagnosticReport")
    text, image = report["presentedForm"]
    assert base64.b64decode(text["data"]).decode() == "No acute cardiopulmonary process.\nHeart size normal."
    assert image["contentType"] == "image/jpeg"
    [document] = _of(result.resources, "DocumentReference")
    assert document["content"][0]["attachment"]["data"] == "aGVsbG8="
    [creatinine] = _of(result.resources, "Observation")
    assert creatinine["valueRange"]["low"]["value"] == 1
    assert creatinine["valueRange"]["high"]["value"] == 3
    assert creatinine["note"] == [{"text": "Sample slightly haemolysed"}]
    assert report["result"] == [{"reference": f"Observation/{creatinine['id']}"}]


def test_one_unreadable_administration_costs_only_itself():
    second = "RXA|0|2|202503061400||^^|four hundred|mg^mg^UCUM|||||||||||||CP\r"
    untimed = "RXA|0|3|||310965^Ibuprofen 200 MG Oral Tablet^RXNORM|400|mg|||||||||||||CP\r"
    result = normalize_hl7(RAS + second + untimed, tz=UTC)
    given = [r for r in result.resources if r["resourceType"] == "MedicationAdministration"]
    assert len(given) == 2  # the first as sent; the second without its code or dose; the third dropped
    assert given[1]["medicationCodeableConcept"] == {
        "extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]
    }
    assert "dosage" not in given[1] or "dose" not in given[1]["dosage"]
    assert [(i.severity, i.code, i.location) for i in result.issues] == [
        ("warning", "missing-element", "RXA[2]-5"),
        ("warning", "malformed-value", "RXA[2]-6"),
        ("error", "dropped-content", "RXA[3]"),
    ]
    assert all("four hundred" not in i.text for i in result.issues)


def test_corrupt_base64_is_kept_as_sent_with_a_located_issue():
    result = normalize_hl7(ORU.replace("aGVsbG8=", "not*base64"), tz=UTC)
    [issue] = result.issues
    assert (issue.code, issue.location) == ("malformed-value", "OBX[3]-5")
    assert "not*base64" not in issue.text
    kept = [r for r in result.resources if r["resourceType"] == "Observation" and "valueString" in r]
    assert [r["extension"][0]["extension"][0]["valueString"] for r in kept] == ["ED"]
    assert "not*base64" in kept[0]["valueString"]


def test_uncoded_value_outside_a_report_keeps_a_data_absent_code_not_an_invented_one():
    text = ORU.replace("OBR|1|RAD1|RAD1F|71045^XR chest 1 view^C4|||202503060900|||||||||||||||||F\r", "")
    with pytest.raises(MappingError) as err:
        normalize_hl7(text, tz=UTC, strict=True)
    assert err.value.location == "OBX-3"
    result = normalize_hl7(text, tz=UTC)
    assert ("missing-element", "OBX[1]-3") in {(i.code, i.location) for i in result.issues}
    codes = [r["code"] for r in result.resources if r["resourceType"] == "Observation"]
    assert codes[0] == {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "unknown"}]}


def test_unmapped_fields_and_z_segments_are_reported():
    text = (
        ORU.replace(
            "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r",
            "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M|||||||||||||||||||||||ZZ\r",
        )
        + "ZPI|1|custom\rZPI|2|more\r"
    )
    result = normalize_hl7(text, tz=UTC)
    assert result.unmapped["ZPI"] == 2
    assert z_segments(result.unmapped) == 2
    assert "PID-3" not in result.unmapped
    assert "OBX-5" not in result.unmapped
    assert result.unmapped == unmapped(parse_message(text))


def test_unmapped_reports_a_field_with_content_only():
    msg = parse_message(
        "MSH|^~\\&|A|B|C|D|20250101||ADT^A08|1|P|2.5\rPID|1||1^^^X||DOE^J|||F||||^^^||555-0100\r"
    )
    report = unmapped(msg)
    assert report == {"PID-14": 1}  # PID-12 holds only separators


def test_agreement_with_fhir_converter_holds(corpora):
    spec = importlib.util.spec_from_file_location("agreement", REPO / "bench" / "agreement.py")
    assert spec is not None
    assert spec.loader is not None
    agreement = importlib.util.module_from_spec(spec)
    sys.modules["agreement"] = agreement  # dataclasses look their module up
    spec.loader.exec_module(agreement)
    report = agreement.run(corpora)
    assert report.converted + len(report.refused) == 132
    assert report.total.compared > 2000
    # On the fields both converters fill; and on every field FHIR-Converter fills, omissions
    # counted as disagreements (64.7 % when omissions were first counted: it must not drop).
    assert report.total.both_filled_rate >= 0.95, report.total.disagreements.most_common(5)
    assert report.total.agree >= 2848
    assert report.total.rate >= 0.6469
    # Only the message types outside the normalizer's scope are refused.
    assert {mt.split("^")[0] for _, mt, _ in report.refused} <= {"ADT", "BAR", "DFT", "REF"}


def test_adt_patient_contacts_providers_procedures_coverage_and_death(corpora):
    result = normalize_hl7(_sample(corpora, "ADT-A01-01"), tz=UTC)
    [patient] = _of(result.resources, "Patient")
    assert patient["contact"][0]["name"]["family"] == "Evan"  # NK1-2
    assert patient["contact"][0]["relationship"][0]["coding"][0]["code"] == "EMC"
    assert patient["generalPractitioner"][0] == {"identifier": {"value": "88"}, "display": "rold Hippo"}
    [encounter] = _of(result.resources, "Encounter")
    assert encounter["reasonCode"][0]["coding"][0]["code"] == "140004"  # PV2-3
    procedures = _of(result.resources, "Procedure")
    assert {p["code"]["coding"][0]["code"] for p in procedures} >= {"76164006"}
    assert all(p["encounter"]["reference"] == f"Encounter/{encounter['id']}" for p in procedures)
    coverages = _of(result.resources, "Coverage")
    assert coverages
    assert coverages[0]["payor"] == [{"display": "Blue Cross Blue Shield of Texas"}]
    assert coverages[0]["beneficiary"]["reference"] == f"Patient/{result.patient_id}"
    death = [
        c for c in _of(result.resources, "Condition") if c.get("category") == [{"text": "cause of death"}]
    ]
    assert [c["code"]["coding"][0]["code"] for c in death] == ["I21"]
    for item in ("NK1-2", "PD1-4", "PV2-3", "PR1-3", "IN1-4", "PDA-1"):
        assert item not in result.unmapped


def test_demographics_and_visit_participants(corpora):
    result = normalize_hl7(_sample(corpora, "ORM-O01-01"), tz=UTC)
    [patient] = _of(result.resources, "Patient")
    assert patient["maritalStatus"]["coding"][0]["code"] == "M"
    race, ethnicity, mother = patient["extension"]
    assert race["url"].endswith("us-core-race")
    assert [e["valueCoding"]["code"] for e in race["extension"] if e["url"] == "ombCategory"] == [
        "2106-3",
        "2028-9",
    ]
    assert race["extension"][-1] == {"url": "text", "valueString": "White, Asian"}
    assert ethnicity["extension"][0]["valueCoding"]["code"] == "2186-5"  # table 0189 N
    assert mother == {"url": MOTHERS_MAIDEN_NAME, "valueString": "SMITH"}
    [encounter] = _of(result.resources, "Encounter")
    roles = {p["type"][0]["coding"][0]["code"]: p["individual"] for p in encounter["participant"]}
    assert roles["ATND"] == {"identifier": {"value": "0210"}, "display": "AARON ATTEND"}
    assert roles["REF"]["identifier"] == {"value": "0310"}
