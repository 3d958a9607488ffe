"""NEWS2 against chart 1 of the RCP 2017 report, band by band, and its response thresholds."""

from datetime import date
from decimal import Decimal

import pytest

from inference.cds import news2
from inference.cds.news2 import News2Config, band_score, response, spo2_scale_2
from tests.unit.inference.cds.fixtures import T0, condition, hours, obs, state_of, vitals

CONFIG = News2Config(window=hours(12))

# (value, score) on both sides of every boundary printed in chart 1.
CHART = {
    "respiration": (
        news2.RESPIRATION,
        [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (4, 3), (40, 3)],
    ),
    "spo2_scale_1": (news2.SPO2_SCALE_1, [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]),
    "systolic": (
        news2.SYSTOLIC,
        [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3)],
    ),
    "pulse": (
        news2.PULSE,
        [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2), (130, 2), (131, 3)],
    ),
    "temperature": (
        news2.TEMPERATURE,
        [
            ("35.0", 3),
            ("35.1", 1),
            ("36.0", 1),
            ("36.1", 0),
            ("38.0", 0),
            ("38.1", 1),
            ("39.0", 1),
            ("39.1", 2),
        ],
    ),
}


@pytest.mark.parametrize(
    ("row", "value", "expected"),
    [(row, value, expected) for row, (_, cases) in CHART.items() for value, expected in cases],
)
def test_chart_1_bands(row, value, expected):
    bands, _ = CHART[row]
    assert band_score(Decimal(str(value)), bands) == expected


@pytest.mark.parametrize(
    ("value", "on_oxygen", "expected"),
    [
        (83, False, 3),
        (84, False, 2),
        (85, True, 2),
        (86, False, 1),
        (87, True, 1),
        (88, True, 0),
        (92, True, 0),
        (93, False, 0),
        (97, False, 0),
        (93, True, 1),
        (94, True, 1),
        (95, True, 2),
        (96, True, 2),
        (97, True, 3),
    ],
)
def test_spo2_scale_2(value, on_oxygen, expected):
    assert spo2_scale_2(Decimal(value), on_oxygen=on_oxygen) == expected


@pytest.mark.parametrize(
    ("aggregate", "red", "expected"),
    [
        (0, False, None),
        (4, False, None),
        (3, True, ("warning", 1)),
        (5, False, ("warning", 2)),
        (6, True, ("warning", 2)),
        (7, False, ("critical", 3)),
        (12, True, ("critical", 3)),
    ],
)
def test_response_thresholds(aggregate, red, expected):
    verdict = response(aggregate, red)
    assert (verdict[:2] if verdict else None) == expected


def _findings(*resources, **kwargs):
    return news2.evaluate(state_of(*resources, **kwargs), T0, CONFIG)


def test_normal_observations_raise_nothing():
    assert _findings(*vitals()) == []
    assert news2.score(state_of(*vitals()), T0, CONFIG).aggregate == 0


def test_aggregate_four_without_a_red_score_raises_nothing():
    # RR 21 (2) + HR 91 (1) + temperature 38.1 (1) = 4
    assert news2.score(state_of(*vitals(rr=21, hr=91, temp=38.1)), T0, CONFIG).aggregate == 4
    assert _findings(*vitals(rr=21, hr=91, temp=38.1)) == []


def test_single_red_parameter_is_an_urgent_warning():
    [finding] = _findings(*vitals(rr=25))
    assert (finding.severity, finding.level) == ("warning", 1)
    assert finding.summary.startswith("NEWS2 3")
    assert any(i.label == "Respiratory rate" and "(scores 3)" in i.value for i in finding.inputs)


def test_aggregate_five_is_medium_and_seven_is_high():
    # RR 21 (2) + HR 111 (2) + temperature 38.1 (1) = 5
    [medium] = _findings(*vitals(rr=21, hr=111, temp=38.1))
    assert (medium.severity, medium.level, medium.summary[:7]) == ("warning", 2, "NEWS2 5")
    # + SBP 100 (2) = 7
    [high] = _findings(*vitals(rr=21, hr=111, temp=38.1, sbp=100))
    assert (high.severity, high.level, high.summary[:7]) == ("critical", 3, "NEWS2 7")
    assert high.citation == news2.CITATION
    assert set(high.evidence) <= {i.ref for i in high.inputs}


def test_supplemental_oxygen_scores_two_and_fio2_of_air_does_not():
    on_oxygen = state_of(*vitals(), obs("3151-8", 2))
    assert news2.score(on_oxygen, T0, CONFIG).aggregate == 2
    on_air = state_of(*vitals(), obs("3150-0", 21))
    assert news2.score(on_air, T0, CONFIG).aggregate == 0


def test_scale_2_applies_with_hypercapnic_respiratory_failure():
    hypercapnic = condition("http://hl7.org/fhir/sid/icd-10-cm", "J96.12")
    assert news2.score(state_of(*vitals(spo2=88)), T0, CONFIG).aggregate == 3  # scale 1
    scored = news2.score(state_of(*vitals(spo2=88), hypercapnic), T0, CONFIG)
    assert (scored.scale, scored.aggregate) == (2, 0)
    resolved = condition("http://hl7.org/fhir/sid/icd-10-cm", "J96.12", status="resolved")
    assert news2.score(state_of(*vitals(spo2=88), resolved), T0, CONFIG).scale == 1


def test_new_confusion_or_worse_scores_three():
    for level in ("New confusion", "Voice", "Pain", "Unresponsive"):
        assert news2.score(state_of(*vitals(acvpu=level)), T0, CONFIG).aggregate == 3, level


def test_most_recent_value_within_the_window_counts():
    old_high = obs("9279-1", 30, at=T0 - hours(2))
    assert news2.score(state_of(*vitals(), old_high), T0, CONFIG).aggregate == 0  # RR 16 is newer
    stale = obs("9279-1", 30, at=T0 - hours(13))
    assert news2.score(state_of(*vitals(rr=None), stale), T0, CONFIG).missing == ("Respiratory rate",)


def test_partial_sets_alert_only_when_a_threshold_is_already_reached():
    [finding] = _findings(obs("9279-1", 30), obs("8867-4", 140))  # 3 + 3, four parameters missing
    assert finding.summary.startswith("NEWS2 6 (partial: 3 of 7)")
    assert "SpO2" in finding.detail
    assert _findings(obs("8867-4", 95)) == []


def test_units_are_converted_before_scoring():
    fahrenheit = obs("8310-5", 102.2, "[degF]")  # 39.0 °C scores 1
    assert news2.score(state_of(*vitals(temp=None), fahrenheit), T0, CONFIG).aggregate == 1


def test_children_are_not_scored():
    assert _findings(*vitals(rr=30), birth_date=date(2015, 1, 1)) == []
    assert _findings(*vitals(rr=30), birth_date=date(2009, 3, 6))  # 16 today
