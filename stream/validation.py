"""FHIR R4 validation of the normalizer's output with fhir.resources (R4B models), made cheap
for the content a feed repeats.

Pure functions with bounded in-process memos. Validation is a pure function of the content,
and a feed repeats content at two levels: every message about a patient carries the same
Patient, and the resources of a visit share the same code concepts, references, categories
and identifiers. So:

- a resource whose exact JSON was already validated is not validated again (`_verdicts`);
- each complex top-level element (a CodeableConcept, Reference, Quantity, backbone element)
  is validated once per exact JSON by its own fhir.resources model (`_element`), and the
  resource model then receives the validated element instances, which pydantic accepts
  without validating them again. The resource's own rules (required elements, choice
  types, empty complex elements) still run on every new resource.

Only successes are remembered. The error names the failing element path, never its value.
"""

from __future__ import annotations

import functools
import types
import typing
from collections import OrderedDict
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.appointment import Appointment
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.coverage import Coverage
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.immunization import Immunization
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.specimen import Specimen
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

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
}
VERDICTS_KEPT = 4096
# A resource's key: its type and, per element, the primitive value or the element's JSON.
_Key = tuple[Any, ...]
_verdicts: OrderedDict[_Key, None] = OrderedDict()


class InvalidResource(ValueError):
    """A resource fhir.resources rejects: the element path and the pydantic error type."""

    def __init__(self, resource_type: str, path: str, error_type: str) -> None:
        super().__init__(f"{resource_type} fails FHIR R4 validation at {path} ({error_type})")
        self.path = path
        self.error_type = error_type


def _dump(value: Any) -> bytes:
    return to_json(value)


def validate(resource: dict[str, Any]) -> None:
    """Validate one resource (plain JSON) against its fhir.resources R4B model.

    Raises:
        InvalidResource: with the path of the first failing element.
        KeyError: a resource type the normalizer does not produce (a programming error).
    """
    kind = resource["resourceType"]
    elements = _elements(kind)
    # Each complex value is serialized once: its JSON is both part of the resource's key and
    # the key of the element's own verdict.
    dumped: dict[str, Any] = {}
    parts: list[Any] = [kind]
    for name, value in resource.items():
        if isinstance(value, list):
            text: Any = tuple(_dump(item) for item in value)
        elif isinstance(value, dict):
            text = _dump(value)
        else:
            text = (type(value).__name__, value)
        dumped[name] = text
        parts.append(name)
        parts.append(text)
    key = tuple(parts)
    if key in _verdicts:
        _verdicts.move_to_end(key)
        return
    data: dict[str, Any] = {}
    for name, value in resource.items():
        spec = elements.get(name)
        if spec is None:
            data[name] = value
        elif spec[1] and isinstance(value, list):
            data[name] = [
                _checked(kind, spec[0], f"{name}.{i}", item, text)
                for i, (item, text) in enumerate(zip(value, dumped[name], strict=True))
            ]
        elif not spec[1] and isinstance(value, dict):
            data[name] = _checked(kind, spec[0], name, value, dumped[name])
        else:
            data[name] = value  # the wrong shape: the resource model reports it
    try:
        MODELS[kind].model_validate(data)
    except ValidationError as exc:
        raise _invalid(kind, "", exc) from None
    _verdicts[key] = None
    if len(_verdicts) > VERDICTS_KEPT:
        _verdicts.popitem(last=False)


def clear_memos() -> None:
    """Forget remembered verdicts and elements (benchmarks measure with and without them)."""
    _verdicts.clear()
    _element.cache_clear()


def _checked(kind: str, model: type[BaseModel], path: str, value: Any, text: bytes) -> Any:
    if not isinstance(value, dict):
        return value
    try:
        return _element(model, text)
    except ValidationError as exc:
        raise _invalid(kind, path, exc) from None


@functools.lru_cache(maxsize=8192)
def _element(model: type[BaseModel], content: bytes) -> BaseModel:
    return model.model_validate_json(content)


def _invalid(kind: str, prefix: str, exc: ValidationError) -> InvalidResource:
    first = exc.errors()[0]
    inner = ".".join(str(p) for p in first["loc"])
    path = ".".join(p for p in (prefix, inner) if p)
    return InvalidResource(kind, path, first["type"])


@functools.cache
def _elements(kind: str) -> dict[str, tuple[type[BaseModel], bool]]:
    """JSON name → (element model, repeats) for the complex top-level elements of a type."""
    out: dict[str, tuple[type[BaseModel], bool]] = {}
    for name, info in MODELS[kind].model_fields.items():
        resolved = _model_of(info.annotation)
        if resolved is not None:
            out[info.alias or name] = resolved
    return out


def _model_of(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return None
            annotation = args[0]
        elif origin is list:
            repeats = True
            annotation = typing.get_args(annotation)[0]
        else:
            break
    get_model = getattr(annotation, "get_model_klass", None)
    if isinstance(annotation, type) and get_model is not None:
        model = get_model()
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model, repeats
    return None
