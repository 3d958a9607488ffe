"""Partial conversion: what real feeds send converts, with data-quality issues for what was
wrong, and is refused only when it cannot be parsed or attributed."""

import random
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.feed_mutations import MUTATIONS, mutate
from kernel.errors import Hl7Error, Hl7ParseError, MappingError, UnsupportedMessageError
from kernel.quality import HL7V2_DATATYPE, ISSUE_CODES
from stream.normalize import normalize_hl7
from tests.unit.stream.fixtures import MESSAGES

UTC = ZoneInfo("UTC")
UCUM = "http://unitsofmeasure.org"
ISO4217 = "urn:iso:std:iso:4217"
HEAD = (
    "MSH|^~\\&|STATELAB|PHL|EHR|MERCY|202503061000||ORU^R01^ORU_R01|ELR001|P|2.5.1\r"
    "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    "OBR|1|P1|F1|24331-1^Lipid panel^LN|||202503060900|||||||||||||||||F\r"
)


def _value(obx_type: str, value: str):
    result = normalize_hl7(HEAD + f"OBX|1|{obx_type}|1234-5^Result^LN||{value}||||||F\r", tz=UTC)
    [obs] = [r for r in result.resources if r["resourceType"] == "Observation"]
    get_fhir_model_class("Observation").model_validate(obs)  # fhir.resources itself, no memo
    return {k: v for k, v in obs.items() if k.startswith("value")}, result.issues


@pytest.mark.parametrize(
    ("obx_type", "value", "expected"),
    [
        ("NM", "6.4", {"valueQuantity": {"value": 6.4}}),
        ("SN", "<^5", {"valueQuantity": {"value": 5, "comparator": "<"}}),
        ("SN", "^10^-^20", {"valueRange": {"low": {"value": 10}, "high": {"value": 20}}}),
        ("SN", "^1^:^128", {"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}),
        ("SN", "^3^+", {"valueQuantity": {"value": 3, "comparator": ">="}}),
        ("ST", "POSITIVE", {"valueString": "POSITIVE"}),
        ("TX", "line one~line two", {"valueString": "line one\nline two"}),
        ("FT", "Formatted", {"valueString": "Formatted"}),
        ("CWE", "260373001^Detected^SCT", None),
        ("CE", "260373001^Detected^SCT", None),
        ("CNE", "260373001^Detected^SCT", None),
        ("DT", "20250306", {"valueDateTime": "2025-03-06"}),
        ("DTM", "202503060930-0500", {"valueDateTime": "2025-03-06T09:30:00-05:00"}),
        ("TS", "20250306", {"valueDateTime": "2025-03-06"}),
        ("TM", "1330", {"valueTime": "13:30:00"}),
        ("TM", "133005.25", {"valueTime": "13:30:05.25"}),
        ("ID", "Y", {"valueCodeableConcept": {"coding": [{"code": "Y"}]}}),
        ("IS", "N", {"valueCodeableConcept": {"coding": [{"code": "N"}]}}),
        ("NR", "10^20", {"valueRange": {"low": {"value": 10}, "high": {"value": 20}}}),
        (
            "CQ",
            "5^mL",
            {
                "valueQuantity": {
                    "value": 5,
                    "unit": "mL",
                    "system": "http://unitsofmeasure.org",
                    "code": "mL",
                }
            },
        ),
        (
            "CQ",  # the units a CWE written in subcomponents
            "5^mL&milliliter&UCUM",
            {"valueQuantity": {"value": 5, "unit": "milliliter", "system": UCUM, "code": "mL"}},
        ),
        (
            "MO",
            "12.50^USD",
            {
                "valueQuantity": {
                    "value": 12.5,
                    "unit": "currency",
                    "system": "urn:iso:std:iso:4217",
                    "code": "USD",
                }
            },
        ),
        ("CX", "A123456^^^STATELAB", {"valueString": "A123456 (STATELAB)"}),
        (
            "XAD",
            "12 MAIN ST^^SPRINGFIELD^IL^62701^USA",
            {"valueString": "12 MAIN ST, SPRINGFIELD, IL, 62701, USA"},
        ),
        ("XPN", "DOE^JANE^Q", {"valueString": "JANE Q DOE"}),
        ("XCN", "1234^SMITH^JOHN", {"valueString": "1234 JOHN SMITH"}),
        ("XON", "STATE PUBLIC HEALTH LAB", {"valueString": "STATE PUBLIC HEALTH LAB"}),
        ("XTN", "^PRN^PH^^^217^5550123", {"valueString": "217 5550123"}),
    ],
)
def test_every_value_type_of_the_obx_table_is_mapped(obx_type, value, expected):
    got, issues = _value(obx_type, value)
    if expected is None:
        assert got["valueCodeableConcept"]["coding"][0] == {
            "system": "http://snomed.info/sct",
            "code": "260373001",
            "display": "Detected",
        }
    else:
        assert got == expected
    assert issues == ()


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        ("6.4", "valueQuantity"),
        ("<^5", "valueQuantity"),
        ("260373001^Detected^SCT", "valueCodeableConcept"),
        ("20250306", "valueDateTime"),
        ("POSITIVE", "valueString"),
    ],
)
def test_an_empty_obx_2_is_read_by_the_values_shape(value, shape):
    got, issues = _value("", value)
    assert list(got) == [shape]
    [issue] = issues
    assert (issue.code, issue.severity, issue.location) == ("unknown-value-type", "information", "OBX[1]-2")


def test_an_unknown_type_is_kept_as_sent_with_its_datatype_and_an_issue():
    got, issues = _value("ZZ", "PRIVATE^VALUE")
    assert got["valueString"] == "PRIVATE^VALUE"
    [issue] = issues
    assert (issue.code, issue.location) == ("unknown-value-type", "OBX[1]-2")
    assert "PRIVATE" not in issue.text
    result = normalize_hl7(HEAD + "OBX|1|ZZ|1234-5^Result^LN||PRIVATE^VALUE||||||F\r", tz=UTC)
    [obs] = [r for r in result.resources if r["resourceType"] == "Observation"]
    [ext] = obs["extension"]
    assert ext["url"] == HL7V2_DATATYPE
    assert {e["url"]: e["valueString"] for e in ext["extension"]} == {
        "datatype": "ZZ",
        "value": "PRIVATE^VALUE",
    }


def test_a_nm_with_a_comparator_is_read_as_sn_with_an_information_issue():
    got, issues = _value("NM", "<0.5")
    assert got == {"valueQuantity": {"value": 0.5, "comparator": "<"}}
    assert [(i.code, i.severity) for i in issues] == [("malformed-value", "information")]


def test_one_bad_obx_does_not_refuse_the_message():
    text = HEAD + "OBX|1|NM|1234-5^A^LN||6.4||||||F\r" + "OBX|2|NM|2345-6^B^LN||six||||||F\r"
    text += "OBX|3|XYZ|3456-7^C^LN||Q||||||F\r"
    result = normalize_hl7(text, tz=UTC)
    values = [
        r.get("valueQuantity", r.get("valueString"))
        for r in result.resources
        if r["resourceType"] == "Observation"
    ]
    assert values == [{"value": 6.4}, "six", "Q"]
    assert [(i.code, i.location) for i in result.issues] == [
        ("malformed-value", "OBX[2]-5"),
        ("unknown-value-type", "OBX[3]-2"),
    ]
    with pytest.raises(Hl7Error):
        normalize_hl7(text, tz=UTC, strict=True)


CASE = (
    "MSH|^~\\&|STATELAB|PHL|CDC|CDC|202503061000||ORU^R01^ORU_R01|CASE1|P|2.5.1\r"
    "PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    "OBR|1||CASE-77|68991-9^Epidemiologically important information^LN|||20250306\r"
    "OBX|1|CWE|77965-2^Immediate national notifiable condition^LN||Y^Yes^HL70136||||||F\r"
    "OBR|2||CASE-77|55752-0^Clinical information^LN|||20250306\r"
    "OBX|1|DT|11368-8^Illness onset date^LN||20250301||||||F\r"
    "OBR|3||CASE-77|55752-0^Clinical information^LN|||20250306\r"
    "OBX|1|ST|77999-1^Comment^LN||Travel||||||F\r"
)


def test_obrs_sharing_a_filler_number_keep_every_report_with_stable_ids():
    result = normalize_hl7(CASE, tz=UTC)
    reports = [r for r in result.resources if r["resourceType"] == "DiagnosticReport"]
    observations = [r for r in result.resources if r["resourceType"] == "Observation"]
    assert len(reports) == 3
    assert len({r["id"] for r in reports}) == 3
    assert len(observations) == 3
    assert [len(r["result"]) for r in reports] == [1, 1, 1]
    assert ("repeated-identifier", "OBR[1]-3") in {(i.code, i.location) for i in result.issues}
    again = normalize_hl7(CASE, tz=UTC)  # a replay overwrites: the same ids
    assert [r["id"] for r in again.resources] == [r["id"] for r in result.resources]


def test_a_result_without_patient_identity_is_still_refused_at_pid_3():
    with pytest.raises(MappingError) as err:
        normalize_hl7(HEAD.replace("100002^^^MERCY^MR", ""), tz=UTC)
    assert err.value.location == "PID-3"
    no_pid = "".join(s + "\r" for s in HEAD.split("\r") if s and not s.startswith("PID"))
    with pytest.raises(MappingError) as err:
        normalize_hl7(no_pid, tz=UTC)
    assert err.value.location == "PID-3"


REFUSALS = (Hl7ParseError, UnsupportedMessageError)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGES), st.sampled_from(sorted(MUTATIONS)), st.randoms(use_true_random=False))
def test_messages_as_real_feeds_vary_them_convert_and_validate(text, kind, rng):
    """Timestamps in every DTM form, OBX types the mapper may not know, repeated OBRs: a message
    that converted still converts (possibly with issues), and every resource validates."""
    varied, _ = mutate(text, random.Random(rng.random()), kind)
    result = normalize_hl7(varied, tz=UTC)
    for resource in result.resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    keys = [(r["resourceType"], r["id"]) for r in result.resources]
    assert len(keys) == len(set(keys))
    assert {i.code for i in result.issues} <= set(ISSUE_CODES)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGES), st.randoms(use_true_random=False))
def test_a_varied_message_is_refused_only_for_the_listed_reasons(text, rng):
    """Several variations at once; a refusal is only framing, header, type or patient identity."""
    r = random.Random(rng.random())
    for _ in range(3):
        text, _ = mutate(text, r)
    try:
        normalize_hl7(text, tz=UTC)
    except REFUSALS:
        return
    except MappingError as exc:
        assert exc.location == "PID-3"


@pytest.mark.parametrize(
    ("encoding", "data", "expected"),
    [
        ("Base64", "aGVsbG8", "aGVsbG8="),  # padding left off
        ("Base64", "aGVs bG8=", "aGVsbG8="),  # split across lines
        ("A", "hello", "aGVsbG8="),  # the text itself
        ("Hex", "68656c6c6f", "aGVsbG8="),
    ],
)
def test_encapsulated_data_in_every_ed_encoding_becomes_a_document(encoding, data, expected):
    result = normalize_hl7(HEAD + f"OBX|1|ED|PDF^Report^L||^AP^PDF^{encoding}^{data}||||||F\r", tz=UTC)
    [document] = [r for r in result.resources if r["resourceType"] == "DocumentReference"]
    assert document["content"][0]["attachment"]["data"] == expected
    assert result.issues == ()
