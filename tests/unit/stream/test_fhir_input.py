"""FHIR input normalization on real Synthea transaction Bundles."""

from kernel.events import FhirInbound
from stream.fhir_input import normalize_fhir
from tests.unit.stream.fixtures import SYNTHEA, synthea_inbound


def _references(node):
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for item in node for r in _references(item)]
    return []


def test_synthea_patient_bundle_becomes_one_record_with_resolved_references():
    patient_files = [p for p in SYNTHEA if "Information" not in p.name][:5]
    assert patient_files
    for path in patient_files:
        inbound = synthea_inbound(path)
        [group] = normalize_fhir(inbound)
        patient = next(r for r in group.resources if r["resourceType"] == "Patient")
        assert group.patient_id == patient["id"]
        assert len(group.resources) == len(inbound.resources)
        ids = {f"{r['resourceType']}/{r['id']}" for r in group.resources}
        refs = _references(group.resources)
        assert not [r for r in refs if r.startswith("urn:uuid:")], path.name
        subjects = {r["subject"]["reference"] for r in group.resources if "subject" in r}
        assert subjects <= ids


def test_code_systems_become_canonical():
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "urn:oid:2.16.840.1.113883.6.1", "code": "2823-3"}]},
        "valueQuantity": {"value": 4.1, "system": "urn:oid:2.16.840.1.113883.6.8", "code": "mmol/L"},
    }
    [group] = normalize_fhir(FhirInbound(interaction="update", resources=[obs]))
    [out] = group.resources
    assert out["code"]["coding"][0]["system"] == "http://loinc.org"
    assert out["valueQuantity"]["system"] == "http://unitsofmeasure.org"
    assert obs["code"]["coding"][0]["system"].startswith("urn:oid")  # input untouched


def test_resources_without_patient_travel_alone_or_with_the_patient():
    org = {"resourceType": "Organization", "id": "org1", "name": "Mercy"}
    [alone] = normalize_fhir(FhirInbound(interaction="update", resources=[org]))
    assert alone.patient_id == ""
    patient = {"resourceType": "Patient", "id": "p1"}
    [together] = normalize_fhir(FhirInbound(interaction="transaction", resources=[org, patient]))
    assert together.patient_id == "p1"
    assert [r["resourceType"] for r in together.resources] == ["Patient", "Organization"]
