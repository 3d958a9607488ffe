"""The one HL7 v2 timestamp parser: every DTM precision and offset form, the unambiguous
deviations real senders write, and a refusal (with its reason) for the rest."""

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.feed_mutations import dtm_forms
from kernel.errors import MappingError
from kernel.hl7v2.dtm import DtmError, read_dtm, to_fhir_datetime
from kernel.quality import AMBIGUOUS_TIMESTAMP, MALFORMED_TIMESTAMP, collecting

NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025", "2025"),
        ("202503", "2025-03"),
        ("20250306", "2025-03-06"),
        ("2025030609", "2025-03-06T09:00:00-05:00"),
        ("202503060930", "2025-03-06T09:30:00-05:00"),
        ("20250306093015", "2025-03-06T09:30:15-05:00"),
        ("20250306093015.1", "2025-03-06T09:30:15.100-05:00"),
        ("20250306093015.1234", "2025-03-06T09:30:15.123-05:00"),
        ("20250306093015.1234+0100", "2025-03-06T09:30:15.123+01:00"),
        ("202503060930-0800", "2025-03-06T09:30:00-08:00"),
        ("2025030609+0000", "2025-03-06T09:00:00+00:00"),
        ("20250306-0500", "2025-03-06"),  # a date keeps its precision; FHIR dates have no zone
        # deviations real senders write, each readable one way only
        ("2025-03-06", "2025-03-06"),
        ("2025-03", "2025-03"),
        ("2025-03-06T09:30:15Z", "2025-03-06T09:30:15+00:00"),
        ("2025-03-06 09:30", "2025-03-06T09:30:00-05:00"),
        ("2025-03-06T09:30:15.5-07:00", "2025-03-06T09:30:15.500-07:00"),
        ("20250306093015123", "2025-03-06T09:30:15.123-05:00"),  # milliseconds without the dot
        ("20250306093015+05:30", "2025-03-06T09:30:15+05:30"),
        ("20250306093015-05", "2025-03-06T09:30:15-05:00"),
        ("20250306093015.123456789", "2025-03-06T09:30:15.123-05:00"),
        ("19600000", "1960"),  # unknown month and day sent as zeros
        ("19600300", "1960-03"),
        ("13/03/2025", "2025-03-13"),  # day over 12: one reading
        ("03/13/2025", "2025-03-13"),
    ],
)
def test_every_precision_and_the_unambiguous_deviations(value, expected):
    assert read_dtm(value, NY) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("201501011", AMBIGUOUS_TIMESTAMP),  # nine digits: a day or an hour short?
        ("20250306093", AMBIGUOUS_TIMESTAMP),
        ("03/04/2025", AMBIGUOUS_TIMESTAMP),  # March 4 or 3 April
        ("20251301", MALFORMED_TIMESTAMP),
        ("20250230", MALFORMED_TIMESTAMP),
        ("20250306250000", MALFORMED_TIMESTAMP),
        ("20250306093015+2500", MALFORMED_TIMESTAMP),
        ("2025003060930", AMBIGUOUS_TIMESTAMP),
        ("yesterday", MALFORMED_TIMESTAMP),
        ("2025/03/06", MALFORMED_TIMESTAMP),
    ],
)
def test_unreadable_values_are_refused_with_their_reason(value, kind):
    with pytest.raises(DtmError) as err:
        read_dtm(value, NY)
    assert err.value.kind == kind


def test_strict_callers_get_a_located_error_and_a_conversion_gets_an_issue():
    with pytest.raises(MappingError) as err:
        to_fhir_datetime("201501011", NY, segment="RXA", field=3)
    assert (err.value.location, err.value.code) == ("RXA-3", 102)
    assert "201501011" not in str(err.value)
    with collecting() as issues:
        assert to_fhir_datetime("201501011", NY, segment="RXA", field=3) is None
    [issue] = issues
    assert (issue.code, issue.location, issue.severity) == (AMBIGUOUS_TIMESTAMP, "RXA-3", "warning")
    assert "201501011" not in issue.text


def test_empty_and_explicit_null_are_absent():
    assert to_fhir_datetime("  ", NY, segment="OBR", field=7) is None
    assert to_fhir_datetime('""', NY, segment="OBR", field=7) is None


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 12, 31)),
    st.integers(min_value=-12, max_value=14),
    st.data(),
)
def test_every_form_denotes_the_same_moment_at_its_precision(naive, hours, data):
    """Checked against the standard library's reading of the result, not our parser's."""
    when = naive.replace(tzinfo=timezone(timedelta(hours=hours)))
    form = data.draw(st.sampled_from(dtm_forms(when)))
    got = read_dtm(form, UTC)
    if len(got) <= 7:  # a year or a month: the zeros forms drop what is unknown
        assert when.strftime("%Y-%m").startswith(got)
    elif len(got) == 10:
        assert date.fromisoformat(got) == when.date()
    else:
        parsed = datetime.fromisoformat(got)
        assert parsed.tzinfo is not None
        # the form may carry another offset than ``when`` (a sender's own zone) or none (read in
        # UTC): the wall-clock time as written is what must survive, to the precision written
        assert parsed.replace(tzinfo=None) <= when.replace(tzinfo=None)
        assert when.replace(tzinfo=None) - parsed.replace(tzinfo=None) < timedelta(hours=1)
