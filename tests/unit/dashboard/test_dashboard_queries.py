"""The dashboard's pure computations: metric rates and quantiles, lag, masking, outcomes, logins."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from dashboard import queries as q
from dashboard.auth import from_proxy_headers, hash_password, parse_logins, verify
from dashboard.errors import LoginConfigError
from kernel.errors import ReplayError
from kernel.events import TOPICS, Alert, ClinicianFeedback, DeadLetter, patient_key
from kernel.hl7v2.parser import parse_message, patient_identifier
from kernel.replay import corrected
from tests.conftest import corpora_dir

T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


def _exposition(records, observations):
    registry = CollectorRegistry()
    c = Counter("clinstream_stage_records", "", ["stage"], registry=registry)
    h = Histogram("clinstream_stage_latency_seconds", "", ["stage"], buckets=(0.1, 1, 10), registry=registry)
    c.labels("normalizer").inc(records)
    for v in observations:
        h.labels("normalizer").observe(v)
    return generate_latest(registry).decode()


def test_rate_and_quantiles_are_over_the_interval_between_samples():
    prev = q.parse_metrics([_exposition(100, [5.0] * 100)], 0.0)  # a slow start...
    cur = q.parse_metrics([_exposition(150, [5.0] * 100 + [0.05] * 50)], 10.0)  # ...then fast
    assert q.rate(prev, cur, "clinstream_stage_records_total", "stage") == {"normalizer": 5.0}
    window = q.quantiles(prev, cur, "clinstream_stage_latency_seconds", "stage")["normalizer"]
    assert window[0.99] is not None
    assert window[0.99] <= 0.1
    since_start = q.quantiles(None, cur, "clinstream_stage_latency_seconds", "stage")["normalizer"]
    assert since_start[0.5] > 1


def test_two_processes_add_up_and_a_restart_is_not_a_negative_rate():
    cur = q.parse_metrics([_exposition(30, []), _exposition(20, [])], 10.0)
    assert cur.get("clinstream_stage_records_total", stage="normalizer") == 50
    prev = q.parse_metrics([_exposition(500, [])], 0.0)
    assert q.rate(prev, cur, "clinstream_stage_records_total", "stage") == {"normalizer": 5.0}


@pytest.mark.parametrize(
    ("buckets", "quantile", "expected"),
    [
        ({0.1: 0, 1.0: 10, float("inf"): 10}, 0.5, 0.55),
        ({0.1: 10, 1.0: 10, float("inf"): 10}, 0.99, 0.099),
        ({0.1: 0, 1.0: 0, float("inf"): 4}, 0.5, 1.0),  # beyond the last bound: the bound
        ({0.1: 0, float("inf"): 0}, 0.5, None),
    ],
)
def test_bucket_quantile_interpolates_like_prometheus(buckets, quantile, expected):
    got = q.bucket_quantile(quantile, buckets)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_lag_counts_everything_before_a_first_commit():
    rows = q.lag_rows({("g", "t", 0): 5, ("g", "t", 1): None, ("h", "t", 0): 7}, {("t", 0): 7, ("t", 1): 3})
    assert [r.lag for r in rows] == [2, 3, 0]
    assert q.lag_by_group(rows) == {"g": 5, "h": 0}
    assert q.lag_samples(rows)[(q.LAG_METRIC, (("group", "g"),))] == 5.0


def _hl7_corpus():
    for path in sorted((corpora_dir() / "hl7v2").rglob("*.hl7")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        try:
            message = parse_message(text)
            patient_identifier(message)
        except ValueError:
            continue
        yield path.name, text, message


def test_masking_hides_every_patient_identifier_of_the_corpus_and_keeps_msh():
    checked = 0
    for name, text, message in _hl7_corpus():
        masked = q.mask_hl7(text.lstrip("\ufeff"))
        pid = "\r".join(line for line in masked.split("\r") if line.startswith("PID"))
        _, identifier = patient_identifier(message)
        names = [s.value(5).split("^")[0] for s in message.segments if s.name == "PID" and s.value(5)]
        for secret in [identifier, *names]:
            assert secret not in pid, name
        msh = text.lstrip("\ufeff").replace("\n", "\r").split("\r")[0]
        assert masked.split("\r")[0] == msh, name
        checked += 1
    assert checked >= 20


def test_fhir_payloads_are_masked_field_by_field():
    patient = (corpora_dir() / "fhir/fhir-test-cases-r4-examples/patient-example.json").read_bytes()
    shown = q.readable_payload(patient, masked=True)
    data = json.loads(shown)
    assert data["resourceType"] == "Patient"
    assert data["name"] == q.MASK
    assert data["birthDate"] == q.MASK
    assert "Chalmers" not in shown
    assert "Chalmers" in q.readable_payload(patient, masked=False)
    assert q.readable_payload(b"\x00\x01junk", masked=True) == "(6 bytes, not HL7 v2 or JSON: hidden)"


def _letter(**changes):
    base = DeadLetter(
        stage="normalizer",
        source_topic="in",
        partition=0,
        offset=7,
        error_type="MappingError",
        reason="r",
        payload_sha256="h",
        payload=b"MSH|^~\\&|LAB|MERCY|||20250101||ORU^R01|C1|P|2.5\r",
        failed_at=T0,
    )
    return base.model_copy(update=changes)


def test_letter_rows_and_filters():
    rows = [
        q.letter_row(_letter()),
        q.letter_row(_letter(offset=8, stage="indexer", failed_at=T0 - timedelta(days=2))),
    ]
    assert rows[0].sender == "LAB^MERCY"
    assert rows[0].message_type == "ORU^R01"
    assert [r.stage for r in q.filter_letters(rows, q.LetterFilter(since=T0 - timedelta(hours=1)))] == [
        "normalizer"
    ]
    assert q.filter_letters(rows, q.LetterFilter(reason="nothing like it")) == []
    assert q.reason_counts(rows) == [("normalizer", "MappingError", 1), ("indexer", "MappingError", 1)]


def test_replay_outcome_failed_again_processed_or_pending():
    receipt = q.ReplayReceipt("id", "in", 0, 40, False, T0)
    again = _letter(offset=40, reason="still broken")
    assert q.replay_outcome(receipt, {("in", 0): 41}, [again]).startswith("failed again: MappingError")
    assert q.replay_outcome(receipt, {("in", 0): 41}, []) == "processed"
    assert q.replay_outcome(receipt, {("in", 0): 40}, []) == "pending"


def _alert(n, rule):
    return Alert(
        id=f"a{n}",
        patient_id="p",
        rule_id=rule,
        rule_version="1",
        severity="warning",
        summary="s",
        detail="d",
        evidence=(),
        citation="c",
        raised_at=T0,
        trace_id="t",
    )


def _answer(alert_id, outcome, minutes):
    return ClinicianFeedback(
        id=f"f{alert_id}{minutes}",
        patient_id="p",
        target="alert",
        target_id=alert_id,
        outcome=outcome,
        at=T0 + timedelta(minutes=minutes),
        channel="c",
        principal="x",
    )


def test_alert_stats_count_each_alert_once_and_its_latest_answer():
    alerts = [_alert(1, "news2"), _alert(1, "news2"), _alert(2, "news2"), _alert(3, "aki")]
    answers = [_answer("a1", "overridden", 1), _answer("a1", "accepted", 2), _answer("a2", "overridden", 1)]
    news2, aki = q.alert_stats(alerts, answers)
    assert (news2.rule_id, news2.raised, news2.accepted, news2.overridden) == ("news2", 2, 1, 1)
    assert news2.override_rate == 0.5
    assert aki.accept_rate is None


def test_suggestion_stats_join_what_was_served_and_the_answers_to_its_cards():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    served = Counter("clinstream_assist_suggestions", "", ["kind", "rule_id"], registry=registry)
    served.labels("diagnosis", "dx-obesity").inc(4)
    served.labels("treatment", "tx-statin").inc(9)
    snapshot = q.parse_metrics([generate_latest(registry).decode()], at=0.0)
    answers = [
        _answer("c1", "overridden", 1).model_copy(update={"rule_id": "dx-obesity"}),
        _answer("c1", "accepted", 2).model_copy(update={"rule_id": "dx-obesity"}),  # the latest counts
        _answer("c2", "overridden", 1).model_copy(update={"rule_id": "dx-obesity"}),
        _answer("a9", "accepted", 1).model_copy(update={"rule_id": "news2"}),  # an alert, not a suggestion
    ]
    statin, obesity = q.suggestion_stats(snapshot, answers)
    assert (statin.rule_id, statin.kind, statin.served, statin.accept_rate) == (
        "tx-statin",
        "treatment",
        9,
        None,
    )
    assert (obesity.served, obesity.accepted, obesity.overridden, obesity.accept_rate) == (4, 1, 1, 0.5)


def test_citations_are_highlighted_and_sources_listed():
    note = "## Results\n- K 6.2 [1][2]\n\n## Sources\n[1] Observation/a: K 6.2\n[2] Observation/b: K 4.1\n"
    assert "- K 6.2 :blue-background[[1]]:blue-background[[2]]" in q.highlight_citations(note)
    assert q.draft_sources(note) == {1: "Observation/a: K 6.2", 2: "Observation/b: K 4.1"}


def test_logins_verify_in_constant_form_and_refuse_bad_entries():
    logins = parse_logins([f"ada:admin:{hash_password('s3cret', iterations=1000)}"])
    user = verify(logins, "ada", "s3cret")
    assert user is not None
    assert user.may("replay")
    assert not user.masked
    assert verify(logins, "ada", "S3cret") is None
    assert verify(logins, "nobody", "s3cret") is None
    with pytest.raises(LoginConfigError, match="login 1"):
        parse_logins(["ada:root:x"])
    with pytest.raises(LoginConfigError, match="hash"):
        parse_logins(["ada:admin:md5$1$2"])


def test_the_oidc_hook_trusts_only_the_configured_headers():
    headers = {"X-Forwarded-Email": "dr.who@example.org", "X-Forwarded-Groups": "staff,clinician"}
    user = from_proxy_headers(headers, "x-forwarded-email", "X-Forwarded-Groups")
    assert user is not None
    assert (user.name, user.role) == ("dr.who@example.org", "clinician")
    assert from_proxy_headers(headers, None, None) is None  # the hook is off unless configured
    nobody = from_proxy_headers({"X-Forwarded-Groups": "admin"}, "X-Forwarded-Email", "X-Forwarded-Groups")
    assert nobody is None
    assert from_proxy_headers({"X-Forwarded-Email": "a"}, "X-Forwarded-Email", None).role == "viewer"


def test_a_correction_gets_a_new_envelope_keyed_by_its_patient():
    _, text, message = next(_hl7_corpus())
    payload = text.replace("\n", "\r").encode()
    replay = corrected(_letter(), payload, TOPICS, editor="ian", now=T0)
    headers = dict(replay.headers)
    assert replay.topic == TOPICS.inbound_hl7v2
    assert replay.edited
    assert headers["source_message_id"] == message.control_id.encode()
    assert headers["replay_of"] == _letter().id.encode()
    assert headers["corrected_by"] == b"ian"
    assert replay.key == patient_key(*patient_identifier(message)).encode()
    with pytest.raises(ReplayError):
        corrected(_letter(), b"MSH|broken", TOPICS, editor="ian", now=T0)


def test_clinstream_password_prints_an_entry_that_logs_in(monkeypatch, capsys):
    import io

    from clinstream.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert main(["password", "ada", "clinician"]) == 0
    entry = capsys.readouterr().out.strip()
    user = verify(parse_logins([entry]), "ada", "correct horse battery")
    assert user is not None
    assert user.role == "clinician"
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["password", "ada", "clinician"]) == 2
    assert main(["password", "ada", "root"]) == 2
