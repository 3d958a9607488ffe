"""Validation with remembered verdicts behaves exactly like fhir.resources on its own."""

import pytest
from fhir.resources.R4B.observation import Observation
from pydantic import ValidationError

from stream.errors import InvalidResource
from stream.validation import clear_memos, validate

GOOD = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
    "subject": {"reference": "Patient/p1"},
    "valueQuantity": {"value": 6.4, "unit": "mmol/L"},
}


@pytest.fixture(autouse=True)
def _fresh():
    clear_memos()


def _same_verdict_as_fhir_resources(resource):
    try:
        Observation.model_validate(resource)
        expected = None
    except ValidationError as exc:
        expected = exc
    try:
        validate(resource)
        got = None
    except InvalidResource as exc:
        got = exc
    assert (expected is None) == (got is None)
    return got


def test_valid_resource_passes_twice():
    assert _same_verdict_as_fhir_resources(GOOD) is None
    assert _same_verdict_as_fhir_resources(GOOD) is None  # from memory


def test_nested_error_is_found_after_the_same_elements_were_valid():
    validate(GOOD)
    bad = {**GOOD, "code": {"coding": [{"system": 5, "code": "2823-3"}]}}
    err = _same_verdict_as_fhir_resources(bad)
    assert err.path == "code.coding.0.system"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"status": None}, "status"),
        ({"valueString": "6.4"}, ""),  # two choices of value[x]
        ({"referenceRange": [{"low": {"value": "x"}}]}, "referenceRange.0.low.value"),
        ({"category": [None]}, "category"),
        ({"effectiveDateTime": "2025-13-01"}, "effectiveDateTime"),
        ({"subject": [{"reference": "Patient/p1"}]}, "subject"),
    ],
)
def test_errors_match_fhir_resources(change, path):
    validate(GOOD)  # remembered elements must not hide the error
    bad = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    err = _same_verdict_as_fhir_resources(bad)
    assert err is not None
    assert err.path.startswith(path)
    assert "6.4" not in str(err)  # locations, never values
