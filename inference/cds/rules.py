"""The rule set: every versioned rule run over a patient's state when a record arrives.

Pure functions. `process` applies one normalized record to the patient's state, evaluates the
rules at the record's clinical time, and passes the findings through alert hygiene. It takes
the wall-clock ``now`` from its caller (the stage, a test, a benchmark) and does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from inference.cds import aki, critical, medsafety, news2, note_signals, risk, sepsis
from inference.cds.critical import CriticalLimit
from inference.cds.findings import Finding, time_or
from inference.cds.hygiene import HygieneConfig, Suppressed, screen
from inference.cds.state import PatientState, apply
from kernel.events import Alert, FhirRecord
from kernel.settings import CdsSettings


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules' settings for one deployment."""

    vitals_window: timedelta = timedelta(hours=12)
    scale_2_codes: tuple[str, ...] = news2.DEFAULT_SCALE_2_CODES
    critical_limits: Mapping[str, CriticalLimit] = field(default_factory=critical.limits_with)
    local_codes: Mapping[str, str] = field(default_factory=dict)
    hygiene: HygieneConfig = field(default_factory=HygieneConfig)
    risk_models: tuple[risk.RiskScorer, ...] = ()
    note_matcher: note_signals.NoteMatcher | None = None


def ruleset_from(settings: CdsSettings) -> RuleSet:
    """The rule set a deployment's settings describe (raises `RuleConfigError` on a bad limit).

    Risk models and the notes' embedding matcher are loaded by the stage (`inference.cds.risk_session`,
    `inference.cds.note_signals.NoteMatcher`) and added with `replace`."""
    return RuleSet(
        vitals_window=timedelta(hours=settings.vitals_window_h),
        scale_2_codes=settings.news2_scale2_codes,
        critical_limits=critical.limits_with(settings.critical_limits),
        local_codes=dict(settings.local_codes),
        hygiene=HygieneConfig(
            default_window=timedelta(hours=settings.dedupe_window_h),
            windows={rule: timedelta(hours=h) for rule, h in settings.rule_dedupe_window_h.items()},
            disabled=frozenset(settings.disabled_rules),
            stale_after=timedelta(hours=settings.stale_after_h),
        ),
    )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one record did: the new state, the alerts to publish, the findings held back."""

    state: PatientState
    alerts: list[Alert]
    held: list[Suppressed]


def evaluate(state: PatientState, at: datetime, changed: frozenset[str], rules: RuleSet) -> list[Finding]:
    """Every rule's findings on ``state`` at clinical time ``at``."""
    window = rules.vitals_window
    return [
        *news2.evaluate(state, at, news2.News2Config(window=window, scale_2_codes=rules.scale_2_codes)),
        *sepsis.qsofa(state, at, window),
        *sepsis.sirs(state, at, window),
        *critical.evaluate(state, changed, rules.critical_limits),
        *aki.evaluate(state, changed),
        *medsafety.evaluate(state, changed, at),
        *risk.evaluate(state, changed, at, rules.risk_models),
    ]


def changed_refs(record: FhirRecord) -> frozenset[str]:
    """References (Type/id) of the resources ``record`` carries."""
    return frozenset(f"{r.get('resourceType')}/{r.get('id')}" for r in record.resources)


def clinical_time(state: PatientState, changed: frozenset[str], received: datetime) -> datetime | None:
    """The newest time of a reading the record brought; for a medication or allergy without
    readings, when it was ordered or recorded (else ``received``); None when it brought neither."""
    times = [r.at for series in state.readings.values() for r in series if r.ref in changed]
    if times:
        return max(times)
    ordered = [c for c in (*state.medications.values(), *state.allergies.values()) if c.ref in changed]
    if not ordered:
        return None
    return max(time_or(c.recorded, received) for c in ordered)


def carries_notes(record: FhirRecord) -> bool:
    """Whether ``record`` brings a note (a DocumentReference): the embedding model may run on it."""
    return any(r.get("resourceType") == "DocumentReference" for r in record.resources)


def process(state: PatientState | None, record: FhirRecord, rules: RuleSet, *, now: datetime) -> Outcome:
    """Apply ``record`` to ``state`` (None: a patient not seen before) and decide its alerts."""
    current = apply(state or PatientState(patient_id=record.patient_id), record, rules.local_codes)
    changed = changed_refs(record)
    at = clinical_time(current, changed, record.envelope.received_at)
    signals = note_signals.evaluate(
        record.resources, default_time=record.envelope.received_at, matcher=rules.note_matcher
    )
    if at is None and not signals:
        return Outcome(current, [], [])
    findings = [*(evaluate(current, at, changed, rules) if at is not None else []), *signals]
    alerts, held, current = screen(
        current, findings, now=now, trace_id=record.envelope.trace_id, config=rules.hygiene
    )
    return Outcome(current, alerts, held)
