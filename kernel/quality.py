"""Data-quality issues: what was wrong with a message that still converted.

Real feeds send values their own type does not allow, value types we had not met,
timestamps with a stray digit and order numbers used twice. Refusing the whole message for
one such element would hide everything else it says from search, alerts and notes, so a
conversion refuses only what it cannot parse or attribute (framing, MSH, control id or
type, no patient identity) and records the narrower problems as issues: a severity, a code,
a location (``OBX[3]-5``) and a text that names the problem, never the value. The element
itself is kept in the most faithful form FHIR allows (the raw HL7 datatype in an extension,
``valueString``, or a ``dataAbsentReason``).

Mappers report through `tolerate` (or `report_issue`, for a repair with no error to raise):
while a conversion runs inside `collecting`, the error becomes an issue and the mapper
carries on with its fallback; outside one (a caller that wants strict behaviour), the error
is raised as before. The collector is a context variable, so the mappers keep their
signatures and stay pure (no I/O, no clock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from kernel.errors import Hl7Error

Severity = Literal["error", "warning", "information"]

# The vocabulary of issue codes: metrics and the dashboard count by these.
UNKNOWN_VALUE_TYPE = "unknown-value-type"
"""OBX-2 names a type we do not map, or is empty and the value's shape says nothing."""
MALFORMED_VALUE = "malformed-value"
"""A value its own type does not allow (NM that is not a number, Base64 that is not)."""
MALFORMED_TIMESTAMP = "malformed-timestamp"
"""A timestamp that is no date at all (a month 13, letters)."""
AMBIGUOUS_TIMESTAMP = "ambiguous-timestamp"
"""A timestamp that could be read two ways (an odd digit count, 03/04/2020)."""
REPEATED_IDENTIFIER = "repeated-identifier"
"""Two segments share identifiers that should be unique (an OBR filler number)."""
MISSING_ELEMENT = "missing-element"
"""A field FHIR requires is empty; the resource carries a dataAbsentReason."""
INVALID_ELEMENT = "invalid-element"
"""An element fhir.resources rejects; it is left out of the resource."""
DROPPED_CONTENT = "dropped-content"
"""A segment whose resource could not be built at all (error severity)."""

ISSUE_CODES = (
    UNKNOWN_VALUE_TYPE,
    MALFORMED_VALUE,
    MALFORMED_TIMESTAMP,
    AMBIGUOUS_TIMESTAMP,
    REPEATED_IDENTIFIER,
    MISSING_ELEMENT,
    INVALID_ELEMENT,
    DROPPED_CONTENT,
)

DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
HL7V2_DATATYPE = "urn:clinstream:hl7v2:datatype"
"""Extension url of the raw HL7 v2 value an element could not be mapped from (valueString)."""


class DataQualityIssue(BaseModel):
    """One problem with a message that converted anyway. Never holds a value of the message."""

    model_config = ConfigDict(frozen=True)

    severity: Severity = "warning"
    code: str = Field(description="One of `ISSUE_CODES`.")
    location: str = Field(description="Segment (with its occurrence) and field, e.g. OBX[3]-5.")
    text: str = Field(description="What is wrong, naming the place, never the value.")


_CURRENT: ContextVar[list[DataQualityIssue] | None] = ContextVar("clinstream_quality", default=None)


@contextmanager
def collecting() -> Iterator[list[DataQualityIssue]]:
    """Collect the issues `tolerate` reports while the block runs (nested blocks stack)."""
    issues: list[DataQualityIssue] = []
    token = _CURRENT.set(issues)
    try:
        yield issues
    finally:
        _CURRENT.reset(token)


def is_collecting() -> bool:
    """Whether a conversion is collecting issues (mappers may then fall back)."""
    return _CURRENT.get() is not None


def tolerate(error: Hl7Error, code: str, *, severity: Severity = "warning", location: str = "") -> None:
    """Record ``error`` as an issue when collecting; raise it otherwise.

    Raises:
        Hl7Error: ``error`` itself, when no conversion is collecting.
    """
    issues = _CURRENT.get()
    if issues is None:
        raise error
    _add(
        issues,
        DataQualityIssue(
            severity=severity, code=code, location=location or error.location, text=error.reason
        ),
    )


def report_issue(code: str, location: str, text: str, *, severity: Severity = "warning") -> None:
    """Record an issue that has no strict-mode error (a repair made silently otherwise)."""
    issues = _CURRENT.get()
    if issues is not None:
        _add(issues, DataQualityIssue(severity=severity, code=code, location=location, text=text))


def _add(issues: list[DataQualityIssue], issue: DataQualityIssue) -> None:
    if issue not in issues:  # mappers that read one field twice report it once
        issues.append(issue)


T = TypeVar("T")


def kept(build: Callable[[], T], location: str) -> T | None:
    """``build()``; or, when it raises an `Hl7Error` while collecting, None and an error issue
    at ``location`` (the segment whose resource is dropped), so the segments around it convert.

    Raises:
        Hl7Error: what ``build`` raised, when no conversion is collecting.
    """
    try:
        return build()
    except Hl7Error as exc:
        tolerate(exc, DROPPED_CONTENT, severity="error", location=location)
        return None


def absent(reason: str = "unknown") -> dict[str, Any]:
    """A ``dataAbsentReason``-style extension for a required element that was not sent."""
    return {"extension": [{"url": DATA_ABSENT_REASON, "valueCode": reason}]}


def raw_value_extension(datatype: str, raw: str) -> dict[str, Any]:
    """The extension that keeps an unmapped HL7 v2 value as sent (datatype and text)."""
    return {
        "url": HL7V2_DATATYPE,
        "extension": [
            {"url": "datatype", "valueString": datatype or "(empty)"},
            {"url": "value", "valueString": raw},
        ],
    }
