"""What a rule concludes about one patient, before alert hygiene decides whether to raise it.

Rules (`news2.py`, `sepsis.py`, `critical.py`, `aki.py`) are pure functions from a
`PatientState` and an evaluation time to findings; `hygiene.py` turns findings into alerts.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from kernel.analytes import Reading
from kernel.events import AlertInput, Severity


class Finding(BaseModel):
    """One rule's conclusion: severity, explanation, inputs with their times, citation."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    rule_version: str
    key: str = Field(description="Dedupe key in the patient: rule + subject (critical-lab/sodium/low).")
    severity: Severity
    level: int = Field(description="Rank within the key; a higher level re-alerts inside the window.")
    summary: str = Field(max_length=140)
    detail: str
    inputs: tuple[AlertInput, ...]
    thresholds: str
    citation: str
    at: datetime = Field(description="Clinical time the finding holds at (newest input).")

    @property
    def evidence(self) -> tuple[str, ...]:
        """The source resources, each once, in input order."""
        return tuple(dict.fromkeys(i.ref for i in self.inputs if i.ref))


def input_of(label: str, reading: Reading, scored: str = "") -> AlertInput:
    """An explanation line for ``reading`` (``scored``: what it counted for, e.g. ``"3"``)."""
    value = reading.as_sent + (f" (scores {scored})" if scored else "")
    return AlertInput(label=label, value=value, at=reading.at, ref=reading.ref)


def newest(inputs: tuple[AlertInput, ...], default: datetime) -> datetime:
    """The time of the newest input (``default`` when none has a time)."""
    return max((i.at for i in inputs if i.at is not None), default=default)


def shorten(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters ending in an ellipsis when it is longer."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def time_or(value: object, default: datetime) -> datetime:
    """A FHIR date or dateTime (when ordered, recorded, written), ``default`` when absent or
    unreadable; one without a zone is read in ``default``'s zone."""
    if not isinstance(value, str):
        return default
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return default
    return when if when.tzinfo is not None else when.replace(tzinfo=default.tzinfo)
