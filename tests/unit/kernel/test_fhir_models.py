"""The faster null-in-list check decides exactly as fhir_core's own, and is really in use."""

import subprocess
import sys

import pytest
from pydantic import BaseModel, ValidationError

from kernel import fhir_models
from stream.validation import _complex_fields

ORIGINAL = fhir_models._ORIGINAL
# Beyond what the normalizer produces: FHIR input brings any resource type.
MORE = ("Bundle", "Organization", "Practitioner", "Location", "Medication", "Provenance", "Subscription")


def _closure() -> list[type[BaseModel]]:
    """Every model class reachable from the resources we validate: resources, elements, backbones."""
    todo = [*fhir_models.MODELS.values(), *(fhir_models.model_class(n) for n in MORE)]
    seen: dict[type[BaseModel], None] = {}
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen[model] = None
        todo.extend(child for child, _ in _complex_fields(model).values())
    return list(seen)


CLASSES = _closure()


def _outcome(fn, cls, data):
    try:
        return ("ok", fn(cls, data))
    except ValidationError as exc:
        return ("error", exc.errors(include_url=False))


def _inputs(cls):
    """For every field, under its name and its alias: a null in a list, a list without one,
    a null on its own; plus the shapes fhir_core passes through untouched."""
    yield None
    yield []
    yield {}
    for name, field in cls.model_fields.items():
        for key in {name, field.alias or name}:
            yield {key: [None]}
            yield {key: [{"id": "x"}, None]}
            yield {key: [{"id": "x"}]}
            yield {key: None}
            yield {key: "text"}


def test_the_closure_is_wide():
    assert len(CLASSES) > 100


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_same_decision_as_fhir_core_for_every_field(cls):
    for data in _inputs(cls):
        assert _outcome(fhir_models.reject_null_complex_elements, cls, data) == _outcome(
            ORIGINAL, cls, data
        ), data


def test_a_null_coding_is_still_rejected_by_the_model():
    with pytest.raises(ValidationError, match="None is not allowed"):
        fhir_models.MODELS["Observation"](
            status="final", code={"coding": [None]}, subject={"reference": "Patient/p"}
        )


def test_installed_for_the_fhir_core_it_was_checked_against():
    # Fails after a fhir_core upgrade that changed the original: look at the new source, then
    # update CHECKED_SOURCE (or drop the replacement if upstream made it cheap).
    assert fhir_models.INSTALLED


def test_every_model_a_process_builds_uses_it():
    # A fresh interpreter, importing the way a stage process does (FHIR ingress, normalizer).
    code = (
        "import connectors.fhir_ingress, stream.normalize\n"
        "from kernel import fhir_models as f\n"
        "from tests.unit.kernel.test_fhir_models import _closure\n"
        "slow = [c.__name__ for c in _closure() if not f.uses_faster_check(c)]\n"
        "print(len(slow), slow[:5])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("0 "), out.stdout + out.stderr
