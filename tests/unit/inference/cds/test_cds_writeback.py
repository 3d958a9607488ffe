"""Alert write-back: DetectedIssue + Provenance valid FHIR R4, ORU^R01 readable HL7, both stable."""

import json
from zoneinfo import ZoneInfo

import pytest

from inference.cds.rules import process, ruleset_from
from inference.cds.writeback import (
    control_id,
    detected_issue,
    fhir_resources,
    oru_r01,
    outbound,
    provenance,
)
from kernel.fhir_models import model_class
from kernel.hl7v2.parser import parse_message
from kernel.settings import CdsSettings
from kernel.writeback import ChartIdentifier, WritebackConfig, writeback_from
from stream.normalize import normalize_hl7
from tests.unit.inference.cds.fixtures import T0, hours, obs, record, vitals

RULES = ruleset_from(CdsSettings())
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [
        {
            "value": "123-45-6789",
            "system": "http://hl7.org/fhir/sid/us-ssn",
            "type": {"coding": [{"code": "SS"}]},
        },
        {"value": "MRN0042", "assigner": {"display": "MERCY"}, "type": {"coding": [{"code": "MR"}]}},
    ],
}


def _alerts():
    """Critical potassium, a KDIGO creatinine rise and a NEWS2 red score on one patient."""
    first = process(
        None, record(PATIENT, obs("2160-0", 1.0, at=T0, oid="cr1"), message_id="a"), RULES, now=T0
    )
    at = T0 + hours(20)
    labs = obs("2823-3", 6.4, "mmol/L", at=at, oid="k"), obs("2160-0", 1.6, at=at, oid="cr2")
    signs = [{**v, "id": f"v{n}"} for n, v in enumerate(vitals(rr=26, at=at))]
    rec = record(*labs, *signs)
    second = process(first.state, rec, RULES, now=at)
    return second.state, second.alerts


def test_the_patient_is_named_by_the_mrn_the_ehr_knows():
    state, alerts = _alerts()
    assert state.identifier == ChartIdentifier(value="MRN0042", authority="MERCY")
    assert {a.rule_id for a in alerts} == {"critical-lab", "aki-kdigo", "news2"}


def test_detected_issue_and_provenance_are_valid_r4_and_explain_the_alert():
    state, alerts = _alerts()
    for alert in alerts:
        issue, prov = fhir_resources(alert, state.identifier)
        model_class("DetectedIssue")(**issue)
        model_class("Provenance")(**prov)
        assert issue["id"] == alert.id
        assert issue["patient"]["identifier"]["value"] == "MRN0042"
        assert [i["reference"] for i in issue["implicated"]] == list(alert.evidence)
        assert issue["severity"] == {"critical": "high", "warning": "moderate", "info": "low"}[alert.severity]
        assert alert.citation in issue["detail"]
        assert alert.rule_version in issue["detail"]
        for item in alert.inputs:
            assert f"{item.label}: {item.value}" in issue["detail"]
        assert prov["target"] == [{"reference": f"DetectedIssue/{alert.id}"}]
        assert [e["what"]["reference"] for e in prov["entity"]] == list(alert.evidence)


def test_without_a_known_mrn_our_patient_reference_is_used():
    _, alerts = _alerts()
    issue = detected_issue(alerts[0], None)
    assert issue["patient"] == {"reference": f"Patient/{alerts[0].patient_id}"}
    pid = parse_message(oru_r01(alerts[0], None).decode()).first("PID")
    assert pid is not None
    assert pid.value(3) == alerts[0].patient_id
    assert pid.value(3, 5) == "PI"


def test_oru_is_readable_hl7_that_our_own_normalizer_maps_to_valid_fhir():
    state, alerts = _alerts()
    for alert in alerts:
        payload = oru_r01(alert, state.identifier, receiving_application="EPIC", receiving_facility="MERCY")
        msg = parse_message(payload.decode())
        assert msg.message_type == "ORU^R01"
        assert msg.control_id == control_id(alert)
        assert msg.msh.value(5) == "EPIC"
        assert msg.msh.value(6) == "MERCY"
        pid = msg.first("PID")
        assert pid is not None
        assert (pid.value(3), pid.value(3, 4), pid.value(3, 5)) == (
            "MRN0042",
            "MERCY",
            "MR",
        )
        obx = msg.first("OBX")
        assert obx is not None
        assert obx.value(5) == alert.summary
        assert obx.value(3) == alert.rule_id
        assert obx.value(8) == {"critical": "AA", "warning": "A", "info": ""}[alert.severity]
        notes = " ".join(n.value(3) for n in msg.all("NTE"))
        assert alert.citation in notes
        normalized = normalize_hl7(payload.decode(), tz=ZoneInfo("UTC"))
        assert any(r["resourceType"] == "Observation" for r in normalized.resources)


def test_delimiters_in_alert_text_are_escaped_and_read_back():
    _, alerts = _alerts()
    odd = alerts[0].model_copy(update={"summary": "K 6.4 | see ^ & ~ \\ now", "detail": "a|b\nc^d"})
    msg = parse_message(oru_r01(odd, None).decode())
    obx = msg.first("OBX")
    assert obx is not None
    assert obx.value(5) == "K 6.4 | see ^ & ~ \\ now"
    assert [n.value(3) for n in msg.all("NTE")][:2] == ["a|b", "c^d"]


def test_a_replayed_alert_writes_the_same_bytes():
    state, alerts = _alerts()
    again_state, again = _alerts()
    for one, two in zip(alerts, again, strict=True):
        assert oru_r01(one, state.identifier) == oru_r01(two, again_state.identifier)
        assert fhir_resources(one, state.identifier) == fhir_resources(two, again_state.identifier)
        assert provenance(one)["id"] == provenance(two)["id"]
    assert len({control_id(a) for a in alerts}) == len(alerts)


@pytest.mark.parametrize(
    ("fhir", "hl7", "counts"),
    [(False, False, (0, 0)), (True, False, (2, 0)), (False, True, (0, 1)), (True, True, (2, 1))],
)
def test_each_channel_is_switched_on_by_itself(fhir, hl7, counts):
    state, alerts = _alerts()
    out = outbound(alerts[0], state.identifier, WritebackConfig(fhir=fhir, hl7=hl7))
    assert (len(out.fhir), len(out.hl7)) == counts
    for payload in out.fhir:
        assert json.loads(payload)["resourceType"] in ("DetectedIssue", "Provenance")


def test_settings_name_the_channels_and_the_receiver():
    config = writeback_from(CdsSettings(writeback_hl7=True, writeback_hl7_receiver="EPIC^MERCY"))
    assert config == WritebackConfig(
        fhir=False, hl7=True, receiving_application="EPIC", receiving_facility="MERCY"
    )
