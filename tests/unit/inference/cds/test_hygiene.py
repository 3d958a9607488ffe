"""Alert hygiene: dedupe per patient + key + window, escalation, snooze, disabled rules, staleness."""

from datetime import timedelta

import pytest

from inference.cds.findings import Finding
from inference.cds.hygiene import HygieneConfig, alert_id, screen, snooze
from inference.cds.state import PatientState
from kernel.events import AlertInput
from tests.unit.inference.cds.fixtures import T0, hours

CONFIG = HygieneConfig(default_window=hours(12), windows={"sirs": hours(24)}, stale_after=hours(24))


def _finding(*, at=T0, level=1, severity="warning", ref="Observation/o1", rule="news2", key=None):
    return Finding(
        rule_id=rule,
        rule_version="1.0.0",
        key=key or rule,
        severity=severity,
        level=level,
        summary="s",
        detail="d",
        inputs=(AlertInput(label="x", value="1", at=at, ref=ref),),
        thresholds="t",
        citation="c",
        at=at,
    )


def _screen(state, finding, *, now=None, config=CONFIG):
    alerts, held, state = screen(state, [finding], now=now or finding.at, trace_id="t", config=config)
    return [a.id for a in alerts], [h.reason for h in held], state


def test_first_finding_is_raised_with_a_deterministic_id_and_remembered():
    state = PatientState(patient_id="p1")
    raised, held, state = _screen(state, _finding())
    assert raised == [alert_id("p1", _finding())]
    assert held == []
    assert state.alerts["news2"].id == raised[0]


def test_redelivery_is_a_duplicate_and_changes_nothing():
    _, _, state = _screen(PatientState(patient_id="p1"), _finding())
    raised, held, again = _screen(state, _finding())
    assert (raised, held, again) == ([], ["duplicate"], state)


def test_same_level_within_the_window_is_held_and_after_it_raised():
    _, _, state = _screen(PatientState(patient_id="p1"), _finding())
    assert _screen(state, _finding(at=T0 + hours(11), ref="Observation/o2"))[1] == ["within-window"]
    assert _screen(state, _finding(at=T0 + hours(12), ref="Observation/o2"))[0]


@pytest.mark.parametrize(("level", "severity"), [(2, "warning"), (1, "critical")])
def test_escalation_re_alerts_inside_the_window(level, severity):
    _, _, state = _screen(PatientState(patient_id="p1"), _finding())
    raised, held, _ = _screen(state, _finding(at=T0 + hours(1), level=level, severity=severity))
    assert (len(raised), held) == (1, [])


def test_per_rule_windows_and_keys_are_separate():
    _, _, state = _screen(PatientState(patient_id="p1"), _finding(rule="sirs"))
    assert _screen(state, _finding(rule="sirs", at=T0 + hours(13), ref="Observation/o9"))[1] == [
        "within-window"
    ]
    other_key = _finding(rule="critical-lab", key="critical-lab/sodium/low")
    assert _screen(state, other_key)[0]


def test_snooze_holds_the_rule_until_it_ends():
    state = snooze(PatientState(patient_id="p1"), "news2", T0 + hours(4))
    assert _screen(state, _finding(at=T0 + hours(1)))[1] == ["snoozed"]
    assert _screen(state, _finding(at=T0 + hours(4)))[0]


def test_disabled_rules_and_stale_findings_page_no_one():
    config = HygieneConfig(disabled=frozenset({"news2"}))
    assert _screen(PatientState(patient_id="p1"), _finding(), config=config)[1] == ["disabled"]
    late = _screen(PatientState(patient_id="p1"), _finding(), now=T0 + hours(25))
    assert late[1] == ["stale"]
    assert late[2].alerts == {}
    assert _screen(PatientState(patient_id="p1"), _finding(), now=T0 + timedelta(hours=23))[0]
