"""The fhir.resources (R4B) model classes every stage validates with, built after one speed fix.

Before validating any model instance, fhir_core runs ``reject_null_complex_elements`` (a
pydantic ``mode="before"`` model validator: a null inside a list of complex elements is an
error). fhir_core 1.1.12 works out again, for every instance, which of the model's fields are
lists of complex types: two cached type lookups per field, over every field of the model
(about 60 for a Patient), whatever the instance holds. Measured over the HL7 v2 corpus that
is a fifth of the normalizer's validation time (`bench/normalize.py`).

`install()` replaces that validator with the same check over a field list computed once per
class. Where it finds a null it hands the data to fhir_core's own function, so the error is
fhir_core's, word for word; otherwise both return the data unchanged. pydantic binds model
validators when it builds each class, so the replacement must be in place before any model
module is imported: this module installs it on import and is the one place the project takes
model classes from (`MODELS`, `model_class`). It replaces only the exact source it was
checked against (a hash): after a fhir_core upgrade the original stays (slower, still
correct) and `tests/unit/test_fhir_models.py` fails until someone looks again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any

import fhir_core.fhirabstractmodel as _fam
from fhir_core.utils import is_list_type, is_primitive_type
from pydantic import BaseModel

# sha256 of the source of fhir_core 1.1.12's FHIRAbstractModel.reject_null_complex_elements
CHECKED_SOURCE = "d0d0200524d20d337433d62ea06bc4f14c0b76c50555dcfaa0282bf5cdf85350"
_VALIDATOR = "reject_null_complex_elements"
_ORIGINAL = getattr(_fam.FHIRAbstractModel, _VALIDATOR).__func__


@functools.cache
def complex_list_fields(cls: type[BaseModel]) -> tuple[tuple[str, str | None], ...]:
    """(field name, alias) of each field of ``cls`` that is a list of complex elements.

    The same selection fhir_core's validator makes (``__ext`` lists of primitive extensions
    keep their positional nulls, as there).
    """
    return tuple(
        (name, field.alias)
        for name, field in cls.model_fields.items()
        if is_list_type(field) and not is_primitive_type(field) and not name.endswith("__ext")
    )


def reject_null_complex_elements(cls: type[BaseModel], data: Any) -> Any:
    """fhir_core's check with the field list computed once per class."""
    if not isinstance(data, dict):
        return data
    for name, alias in complex_list_fields(cls):
        value = data.get(alias if alias and alias in data else name)
        if isinstance(value, list) and any(item is None for item in value):
            return _ORIGINAL(cls, data)  # raises fhir_core's own ValidationError
    return data


def _source_hash() -> str | None:
    try:
        source = inspect.getsource(_ORIGINAL)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()


def install() -> bool:
    """Put the faster check in place for model classes built from now on; True when it is."""
    if _source_hash() != CHECKED_SOURCE:
        return False
    setattr(_fam.FHIRAbstractModel, _VALIDATOR, classmethod(reject_null_complex_elements))
    return True


INSTALLED = install()

# Imported after install(): pydantic binds the validator as each class is built.
from fhir.resources.R4B import get_fhir_model_class  # noqa: E402
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance  # noqa: E402
from fhir.resources.R4B.appointment import Appointment  # noqa: E402
from fhir.resources.R4B.condition import Condition  # noqa: E402
from fhir.resources.R4B.coverage import Coverage  # noqa: E402
from fhir.resources.R4B.diagnosticreport import DiagnosticReport  # noqa: E402
from fhir.resources.R4B.documentreference import DocumentReference  # noqa: E402
from fhir.resources.R4B.encounter import Encounter  # noqa: E402
from fhir.resources.R4B.imagingstudy import ImagingStudy  # noqa: E402
from fhir.resources.R4B.immunization import Immunization  # noqa: E402
from fhir.resources.R4B.medicationadministration import MedicationAdministration  # noqa: E402
from fhir.resources.R4B.medicationdispense import MedicationDispense  # noqa: E402
from fhir.resources.R4B.medicationrequest import MedicationRequest  # noqa: E402
from fhir.resources.R4B.observation import Observation  # noqa: E402
from fhir.resources.R4B.patient import Patient  # noqa: E402
from fhir.resources.R4B.procedure import Procedure  # noqa: E402
from fhir.resources.R4B.servicerequest import ServiceRequest  # noqa: E402
from fhir.resources.R4B.specimen import Specimen  # noqa: E402

# The resource types the HL7 v2 normalizer produces.
MODELS: dict[str, type[BaseModel]] = {
    "Patient": Patient,
    "Encounter": Encounter,
    "Observation": Observation,
    "AllergyIntolerance": AllergyIntolerance,
    "Condition": Condition,
    "DiagnosticReport": DiagnosticReport,
    "DocumentReference": DocumentReference,
    "Immunization": Immunization,
    "ServiceRequest": ServiceRequest,
    "Specimen": Specimen,
    "MedicationRequest": MedicationRequest,
    "MedicationDispense": MedicationDispense,
    "MedicationAdministration": MedicationAdministration,
    "Appointment": Appointment,
    "Procedure": Procedure,
    "Coverage": Coverage,
    "ImagingStudy": ImagingStudy,
}


def model_class(resource_type: str) -> type[BaseModel]:
    """The R4B model of any resource type (FHIR input names any of them).

    Raises:
        KeyError, ValueError: not an R4 resource type (fhir.resources' own errors).
    """
    model: type[BaseModel] = get_fhir_model_class(resource_type)
    return model


def uses_faster_check(model: type[BaseModel]) -> bool:
    """Whether ``model`` was built with the faster check (tests and the benchmark ask)."""
    decorator = model.__pydantic_decorators__.model_validators.get(_VALIDATOR)
    return decorator is not None and getattr(decorator.func, "__func__", None) is reject_null_complex_elements
