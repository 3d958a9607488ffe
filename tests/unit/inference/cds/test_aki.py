"""KDIGO AKI creatinine criteria and staging, on both sides of each threshold."""

from decimal import Decimal

import pytest

from inference.cds import aki
from inference.cds.rules import changed_refs
from tests.unit.inference.cds.fixtures import T0, hours, obs, record, state_of


def _findings(history, new):
    state = state_of(*history, new)
    return aki.evaluate(state, changed_refs(record(new)))


def _cr(value, hours_before=0, unit="mg/dL"):
    return obs("2160-0", value, unit, at=T0 - hours(hours_before))


@pytest.mark.parametrize(
    ("current", "baseline", "rise_48h", "expected"),
    [
        ("1.49", "1.0", False, 0),
        ("1.5", "1.0", False, 1),
        ("1.3", "1.0", True, 1),
        ("1.99", "1.0", False, 1),
        ("2.0", "1.0", False, 2),
        ("2.99", "1.0", False, 2),
        ("3.0", "1.0", False, 3),
        ("4.0", "3.0", True, 3),  # ≥ 4.0 mg/dL
        ("3.9", "3.0", True, 1),
    ],
)
def test_stage_table(current, baseline, rise_48h, expected):
    assert aki.stage(Decimal(current), Decimal(baseline), rise_48h=rise_48h) == expected


def test_rise_of_0_3_within_48_hours():
    [finding] = _findings([_cr(1.0, 47)], _cr(1.3))
    assert (finding.severity, finding.level) == ("warning", 1)
    assert "0.30 mg/dL within 48 h" in finding.detail
    assert _findings([_cr(1.0, 47)], _cr(1.29)) == []


def test_rise_of_0_3_outside_48_hours_needs_1_5_times_baseline():
    assert _findings([_cr(1.0, 49)], _cr(1.3)) == []
    [finding] = _findings([_cr(1.0, 24 * 6)], _cr(1.5))
    assert "1.5 × the 7-day baseline" in finding.detail


def test_baseline_is_the_lowest_value_in_7_days():
    [finding] = _findings([_cr(0.8, 24 * 5), _cr(1.2, 24 * 3)], _cr(1.7))  # 2.1 × 0.8
    assert finding.level == 2
    assert "Creatinine (7-day baseline)" in [i.label for i in finding.inputs]
    assert _findings([_cr(0.5, 24 * 8), _cr(1.2, 24 * 3)], _cr(1.4)) == []  # 0.5 is 8 days old


def test_stage_3_is_critical():
    [finding] = _findings([_cr(1.0, 30)], _cr(3.1))
    assert (finding.severity, finding.level) == ("critical", 3)
    assert finding.summary.startswith("Acute kidney injury, KDIGO stage 3")


def test_micromol_per_litre_is_converted():
    [finding] = _findings([_cr(88.4, 30, "umol/L")], _cr(132.6, 0, "umol/L"))  # 1.0 → 1.5 mg/dL
    assert finding.level == 1
    assert "132.6 umol/L" in finding.summary


def test_only_a_new_creatinine_triggers_and_a_first_value_has_no_baseline():
    assert _findings([], _cr(3.0)) == []
    state = state_of(_cr(1.0, 30), _cr(2.5, 1))
    assert aki.evaluate(state, changed_refs(record(obs("2823-3", 4.0)))) == []
