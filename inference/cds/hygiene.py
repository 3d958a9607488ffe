"""Alert hygiene: which findings become alerts, so that clinicians do not learn to ignore them.

Pure functions. A finding is raised as an alert unless
- its rule is disabled in this deployment (``disabled``),
- the patient's alert for that rule (or that key) is snoozed past the finding's time (``snoozed``),
- its clinical time is older than ``stale_after`` when it is processed: a backfill of history
  or a consumer catching up after an outage does not page anyone with old results (``stale``),
- the same alert was already raised: a redelivered record (``duplicate``),
- an alert with the same key was raised within the rule's dedupe window and this one is not
  worse: neither a higher severity nor a higher level (NEWS2 band, AKI stage) (``within-window``).

The alert id is derived from the patient, the key, the rule version, the level and the evidence,
so every consumer can dedupe on it; the patient's memory of the last alert per key travels in
`PatientState.alerts` and is saved with the rest of the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from inference.cds.findings import Finding
from inference.cds.state import PatientState
from kernel.events import Alert, deterministic_id

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
Reason = Literal["disabled", "snoozed", "stale", "duplicate", "within-window"]


@dataclass(frozen=True, slots=True)
class HygieneConfig:
    """Dedupe windows per rule, rules switched off, and how old a finding may be to page."""

    default_window: timedelta = timedelta(hours=12)
    windows: Mapping[str, timedelta] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    stale_after: timedelta = timedelta(hours=24)

    def window(self, rule_id: str) -> timedelta:
        """The dedupe window of ``rule_id``."""
        return self.windows.get(rule_id, self.default_window)


@dataclass(frozen=True, slots=True)
class Suppressed:
    """A finding that was not raised, and why."""

    finding: Finding
    reason: Reason


def alert_id(patient_id: str, finding: Finding) -> str:
    """Deterministic id: the same finding on the same evidence is the same alert."""
    return deterministic_id(
        "Alert",
        patient_id,
        finding.key,
        finding.rule_version,
        finding.severity,
        str(finding.level),
        *finding.evidence,
    )


def alert_of(finding: Finding, patient_id: str, *, now: datetime, trace_id: str) -> Alert:
    """The alert ``finding`` becomes for ``patient_id`` when raised at ``now``."""
    return Alert(
        id=alert_id(patient_id, finding),
        patient_id=patient_id,
        rule_id=finding.rule_id,
        rule_version=finding.rule_version,
        severity=finding.severity,
        summary=finding.summary,
        detail=finding.detail,
        evidence=finding.evidence,
        citation=finding.citation,
        effective=finding.at,
        raised_at=now,
        trace_id=trace_id,
        key=finding.key,
        level=finding.level,
        inputs=finding.inputs,
        thresholds=finding.thresholds,
    )


def snoozed_until(snoozes: Mapping[str, datetime], key: str, rule_id: str) -> datetime | None:
    """When the snooze of a dedupe key or of its whole rule ends (the later of the two), or None."""
    return max((snoozes[k] for k in (key, rule_id) if k in snoozes), default=None)


def _reason(
    memory: Mapping[str, Alert],
    snoozes: Mapping[str, datetime],
    finding: Finding,
    new_id: str,
    now: datetime,
    config: HygieneConfig,
) -> Reason | None:
    if finding.rule_id in config.disabled:
        return "disabled"
    until = snoozed_until(snoozes, finding.key, finding.rule_id)
    if until is not None and finding.at < until:
        return "snoozed"
    if now - finding.at > config.stale_after:
        return "stale"
    prior = memory.get(finding.key)
    if prior is None:
        return None
    if prior.id == new_id:
        return "duplicate"
    worse = SEVERITY_RANK[finding.severity] > SEVERITY_RANK[prior.severity] or finding.level > prior.level
    prior_at = prior.effective or prior.raised_at  # `screen` always sets effective (the finding's time)
    if not worse and abs(finding.at - prior_at) < config.window(finding.rule_id):
        return "within-window"
    return None


def screen(
    state: PatientState,
    findings: list[Finding],
    *,
    now: datetime,
    trace_id: str,
    config: HygieneConfig,
) -> tuple[list[Alert], list[Suppressed], PatientState]:
    """The alerts to raise, the findings held back with their reason, and the updated memory."""
    alerts: list[Alert] = []
    held: list[Suppressed] = []
    memory = dict(state.alerts)
    for finding in findings:
        new_id = alert_id(state.patient_id, finding)
        reason = _reason(memory, state.snoozes, finding, new_id, now, config)
        if reason is not None:
            held.append(Suppressed(finding, reason))
            continue
        alert = alert_of(finding, state.patient_id, now=now, trace_id=trace_id)
        memory[finding.key] = alert
        alerts.append(alert)
    return alerts, held, state.model_copy(update={"alerts": memory})


def snooze(state: PatientState, key: str, until: datetime) -> PatientState:
    """``state`` with alerts of ``key`` (a dedupe key or a rule id) held back until ``until``."""
    return state.model_copy(update={"snoozes": {**state.snoozes, key: until}})
