"""FHIR R4 validation of the normalizer's output with fhir.resources (R4B models), made cheap
for the content a feed repeats.

Pure functions with bounded in-process memos. Validation is a pure function of the content,
and a feed repeats content at two levels: every message about a patient carries the same
Patient, and the resources of a visit share the same code concepts, references, categories
and identifiers. So:

- a resource whose exact JSON was already validated is not validated again (`_verdicts`);
- each complex element, at every depth (a Coding, a CodeableConcept, a Reference, a
  Quantity, a backbone element), is validated once per exact JSON by its own
  fhir.resources model (`_elements_seen`), its children first; the model above it then
  receives the validated instances, which pydantic accepts without validating them again.
  Each model's own rules (required elements, choice types, empty complex elements,
  primitive formats) still run on every new content.

Only successes are remembered. The error names the failing element path, never its value.
"""

from __future__ import annotations

import functools
import types
import typing
from collections import OrderedDict
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import to_json

from kernel.fhir_models import MODELS
from stream.errors import InvalidResource

VERDICTS_KEPT = 4096
_verdicts: OrderedDict[bytes, None] = OrderedDict()
ELEMENTS_KEPT = 8192
_elements_seen: OrderedDict[tuple[type[BaseModel], bytes], BaseModel] = OrderedDict()


def _dump(value: Any) -> bytes:
    return to_json(value)


def validate(resource: dict[str, Any]) -> None:
    """Validate one resource (plain JSON) against its fhir.resources R4B model.

    Raises:
        InvalidResource: with the path of the first failing element.
        KeyError: a resource type the normalizer does not produce (a programming error).
    """
    kind = resource["resourceType"]
    model = MODELS[kind]
    key = _dump(resource)
    if key in _verdicts:
        _verdicts.move_to_end(key)
        return
    try:
        data = _with_instances(model, resource)
        # The constructor validates once; model_validate ran fhir_core's after-validators twice.
        model(**data)
    except _ElementInvalid as exc:
        raise _invalid(kind, exc.path, exc.error) from None
    except ValidationError as exc:
        raise _invalid(kind, [], exc) from None
    _verdicts[key] = None
    if len(_verdicts) > VERDICTS_KEPT:
        _verdicts.popitem(last=False)


def clear_memos() -> None:
    """Forget remembered verdicts and elements (benchmarks measure with and without them)."""
    _verdicts.clear()
    _elements_seen.clear()


class _ElementInvalid(Exception):
    """An element failed; each level above adds its own step to ``path`` on the way out, so
    the valid path (every message but a bad one) builds no path strings."""

    def __init__(self, error: ValidationError) -> None:
        super().__init__()
        self.error = error
        self.path: list[str] = []


def _with_instances(model: type[BaseModel], value: dict[str, Any]) -> dict[str, Any]:
    """``value`` with each complex child replaced by its validated element instance."""
    fields = _complex_fields(model)
    data = value.copy()
    for name, child in value.items():
        spec = fields.get(name)
        if spec is None:
            continue
        element, repeats = spec
        try:
            if repeats and isinstance(child, list):
                data[name] = [_indexed(element, item, i) for i, item in enumerate(child)]
            elif not repeats and isinstance(child, dict):
                data[name] = _instance(element, child)
            # else the wrong shape: the model reports it
        except _ElementInvalid as exc:
            exc.path.insert(0, name)
            raise
    return data


def _indexed(model: type[BaseModel], item: Any, index: int) -> Any:
    if not isinstance(item, dict):
        return item
    try:
        return _instance(model, item)
    except _ElementInvalid as exc:
        exc.path.insert(0, str(index))
        raise


def _instance(model: type[BaseModel], value: dict[str, Any]) -> BaseModel:
    """The validated instance of one element, validated once per exact JSON (children first)."""
    key = (model, _dump(value))
    seen = _elements_seen.get(key)
    if seen is not None:
        _elements_seen.move_to_end(key)
        return seen
    data = _with_instances(model, value)
    try:
        element = model(**data)
    except ValidationError as exc:
        raise _ElementInvalid(exc) from None
    _elements_seen[key] = element
    if len(_elements_seen) > ELEMENTS_KEPT:
        _elements_seen.popitem(last=False)
    return element


def _invalid(kind: str, prefix: list[str], exc: ValidationError) -> InvalidResource:
    first = exc.errors()[0]
    path = ".".join([*prefix, *(str(p) for p in first["loc"])])
    return InvalidResource(kind, path, first["type"])


@functools.cache
def _complex_fields(model: type[BaseModel]) -> dict[str, tuple[type[BaseModel], bool]]:
    """JSON name → (element model, repeats) for the complex elements of a model."""
    out: dict[str, tuple[type[BaseModel], bool]] = {}
    for name, info in model.model_fields.items():
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
