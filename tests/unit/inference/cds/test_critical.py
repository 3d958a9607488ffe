"""Critical laboratory values: limits on both sides, unit conversion, only new results."""

from decimal import Decimal

import pytest

from inference.cds import critical
from inference.cds.critical import CriticalLimit, limits_with
from inference.cds.errors import RuleConfigError
from inference.cds.rules import changed_refs
from tests.unit.inference.cds.fixtures import obs, record, state_of

LIMITS = limits_with()


def _findings(*resources, limits=LIMITS):
    state = state_of(*resources)
    return critical.evaluate(state, changed_refs(record(*resources)), limits)


@pytest.mark.parametrize(
    ("code", "value", "unit", "side"),
    [
        ("2823-3", 6.0, "mmol/L", "high"),
        ("2823-3", 5.99, "mmol/L", None),
        ("2823-3", 2.5, "mmol/L", "low"),
        ("2823-3", 2.51, "mmol/L", None),
        ("6298-4", 6.4, "meq/L", "high"),
        ("2951-2", 160, "mmol/L", "high"),
        ("2951-2", 159, "mmol/L", None),
        ("2951-2", 120, "mmol/L", "low"),
        ("2345-7", 40, "mg/dL", "low"),
        ("2345-7", 41, "mg/dL", None),
        ("2345-7", 500, "mg/dL", "high"),
        ("2345-7", 2.2, "mmol/L", "low"),  # 39.6 mg/dL
        ("2345-7", 2.3, "mmol/L", None),  # 41.4 mg/dL
        ("718-7", 7.0, "g/dL", "low"),
        ("718-7", 70, "g/L", "low"),
        ("718-7", 7.1, "g/dL", None),
        ("777-3", 20, "10*3/uL", "low"),
        ("777-3", 21, "10*9/L", None),
        ("777-3", 1000, "10*3/uL", "high"),
        ("67151-1", 52, "ng/L", "high"),
        ("67151-1", 51, "ng/L", None),
        ("2524-7", 4.0, "mmol/L", "high"),
        ("2524-7", 3.9, "mmol/L", None),
        ("6301-6", 5.0, "{INR}", "high"),
        ("6301-6", 4.9, "{INR}", None),
    ],
)
def test_limits(code, value, unit, side):
    findings = _findings(obs(code, value, unit))
    assert [f.key.rsplit("/", 1)[1] for f in findings] == ([side] if side else [])
    for finding in findings:
        assert finding.severity == "critical"
        assert f"{value} {unit}" in finding.summary


@pytest.mark.parametrize("unit", ["mg/dL", "", "mmol"])
def test_unknown_unit_does_not_guess(unit):
    assert _findings(obs("2823-3", 62, unit)) == []


@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "registered"])
def test_non_results_do_not_alert(status):
    assert _findings(obs("2823-3", 7.0, "mmol/L", status=status)) == []


def test_bounds_are_not_values():
    quantity = {"value": 0.01, "comparator": "<", "unit": "ng/L", "code": "ng/L"}
    assert _findings(obs("67151-1", None, valueQuantity=quantity)) == []


def test_only_results_in_the_record_are_evaluated():
    old = obs("2823-3", 6.5, "mmol/L")
    state = state_of(old)
    new = obs("2951-2", 140, "mmol/L")
    assert critical.evaluate(state, changed_refs(record(new)), LIMITS) == []


def test_overrides_change_one_side_and_null_switches_it_off():
    limits = limits_with({"potassium": {"high": 6.5}, "sodium": {"low": None}})
    assert limits["potassium"] == CriticalLimit(Decimal("2.5"), Decimal("6.5"))
    assert limits["sodium"].low is None
    assert _findings(obs("2823-3", 6.2, "mmol/L"), limits=limits) == []
    assert _findings(obs("2951-2", 110, "mmol/L"), limits=limits) == []


def test_an_unknown_analyte_in_the_settings_is_refused():
    with pytest.raises(RuleConfigError):
        limits_with({"unobtainium": {"high": 1}})
