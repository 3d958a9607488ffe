"""qSOFA (Sepsis-3) and SIRS (ACCP/SCCM 1992): every criterion on both sides of its threshold."""

import pytest

from inference.cds import sepsis
from tests.unit.inference.cds.fixtures import T0, hours, obs, state_of

WINDOW = hours(12)


def _qsofa(*resources):
    return sepsis.qsofa(state_of(*resources), T0, WINDOW)


def _sirs(*resources):
    return sepsis.sirs(state_of(*resources), T0, WINDOW)


LOW_BP = obs("8480-6", 100)  # meets qSOFA


@pytest.mark.parametrize(
    ("second", "positive"),
    [
        (obs("9279-1", 22), True),
        (obs("9279-1", 21), False),
        (obs("9269-2", 14), True),
        (obs("9269-2", 15), False),
        (obs("67775-7", "Voice"), True),
        (obs("67775-7", "Alert"), False),
    ],
)
def test_qsofa_criteria(second, positive):
    assert bool(_qsofa(LOW_BP, second)) is positive


def test_qsofa_systolic_boundary_and_one_criterion_is_not_enough():
    assert _qsofa(obs("9279-1", 22), obs("8480-6", 101)) == []
    [finding] = _qsofa(obs("9279-1", 22), obs("8480-6", 100), obs("9269-2", 13))
    assert (finding.severity, finding.level) == ("warning", 3)
    assert finding.summary.startswith("qSOFA 3")
    assert len(finding.evidence) == 3


def test_qsofa_counts_altered_mentation_once():
    [finding] = _qsofa(LOW_BP, obs("9269-2", 13), obs("67775-7", "Pain"))
    assert finding.level == 2


FEVER = obs("8310-5", 38.1)  # meets SIRS


@pytest.mark.parametrize(
    ("second", "met"),
    [
        (obs("8867-4", 91), True),
        (obs("8867-4", 90), False),
        (obs("9279-1", 21), True),
        (obs("9279-1", 20), False),
        (obs("2019-8", 31.9), True),
        (obs("2019-8", 32), False),
        (obs("6690-2", 12.1), True),
        (obs("6690-2", 12), False),
        (obs("6690-2", 3.9), True),
        (obs("6690-2", 4), False),
    ],
)
def test_sirs_criteria(second, met):
    assert bool(_sirs(FEVER, second)) is met


@pytest.mark.parametrize(("temperature", "met"), [(38.0, False), (38.1, True), (36.0, False), (35.9, True)])
def test_sirs_temperature_boundaries(temperature, met):
    assert bool(_sirs(obs("8310-5", temperature), obs("8867-4", 100))) is met


def test_sirs_is_information_and_counts_respiratory_criterion_once():
    [finding] = _sirs(FEVER, obs("9279-1", 24), obs("2019-8", 30))
    assert (finding.severity, finding.level) == ("info", 2)


def test_values_outside_the_window_do_not_count():
    assert _qsofa(LOW_BP, obs("9279-1", 30, at=T0 - hours(13))) == []
