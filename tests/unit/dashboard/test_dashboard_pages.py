"""Each dashboard page, run by Streamlit's AppTest over the in-memory backend."""

import pytest
from streamlit.testing.v1 import AppTest

from tests.unit.dashboard import fixtures as dashboard_fakes


def _script():
    from dashboard.app import main
    from tests.unit.dashboard import fixtures as dashboard_fakes

    main(*dashboard_fakes.CURRENT)


@pytest.fixture
def fake():
    dashboard_fakes.CURRENT = dashboard_fakes.build()
    return dashboard_fakes.CURRENT[0]


def _logged_in(user, page="Overview"):
    at = AppTest.from_function(_script, default_timeout=30)
    at.run()
    at.text_input[0].input(user)
    at.text_input[1].input(dashboard_fakes.PASSWORDS[user])
    at.button[0].click().run()
    assert not at.exception, at.exception
    if page != "Overview":
        at.sidebar.radio[0].set_value(page).run()
    assert not at.exception, at.exception
    return at


def _text(at):
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption] + [str(m.value) for m in at.metric]
    parts += [e.value for e in at.error] + [i.value for i in at.info] + [c.value for c in at.code]
    return "\n".join(str(p) for p in parts)


def _frames(at):
    return [df.value for df in at.dataframe]


def test_login_is_required_and_a_wrong_password_refused(fake):
    at = AppTest.from_function(_script, default_timeout=30).run()
    assert not at.sidebar.radio  # nothing but the login form
    at.text_input[0].input("ada")
    at.text_input[1].input("wrong")
    at.button[0].click().run()
    assert "wrong password" in at.error[0].value
    assert not at.sidebar.radio


def test_overview_shows_rates_latency_lag_and_ack_mix(fake):
    at = _logged_in("vic")
    metrics = {m.label: m.value for m in at.metric}
    # 120 more MLLP messages in the 10 s between the two samples
    assert metrics["Ingest (MLLP)"] == "12.0 msg/s"
    assert metrics["Consumer lag"] == "2 records"
    assert metrics["Dead letters"] == "10"
    stages = _frames(at)[0]
    assert list(stages["stage"]) == ["mllp", "normalizer", "indexer", "cds"]
    normalizer = stages[stages["stage"] == "normalizer"].iloc[0]
    assert normalizer["msg/s"] == 12.0
    # 120 new observations, all in the 50-100 ms bucket: rank 114 of 120, interpolated
    assert normalizer["p95"] == "98 ms"
    lag = _frames(at)[1]
    assert lag[lag["group"] == "normalizer"].iloc[0]["lag"] == 2
    acks = _frames(at)[2]
    assert set(acks["code"]) == {"AA", "AE"}
    issues = _frames(at)[3]  # data-quality issues by sender, most frequent first
    assert list(issues["code"]) == ["malformed-timestamp", "unknown-value-type"]
    assert list(issues["total"]) == [14, 4]
    assert list(issues["per_s"]) == [0.7, 0.2]


def test_dead_letters_are_masked_for_a_viewer_who_cannot_replay(fake):
    at = _logged_in("vic", "Dead letters")
    listing = _frames(at)[1]
    assert len(listing) == 2
    assert set(listing["error"]) == {"DataTypeError", "MappingError"}
    assert not [b for b in at.button if b.label.startswith("Replay")]
    shown = _text(at)
    assert "EVERYMAN" not in shown
    assert "PATID1234" not in shown
    assert "MSG00001" in shown  # MSH kept: the control id finds the message at the sender
    assert at.checkbox[0].disabled


def test_dead_letter_filters_narrow_the_list(fake):
    at = _logged_in("vic", "Dead letters")
    at.text_input[0].input("OBX value").run()
    listing = _frames(at)[1]
    assert list(listing["error"]) == ["MappingError"]
    at.text_input[0].input("").run()
    at.multiselect[2].select("mllp").run()  # stage
    assert list(_frames(at)[1]["stage"]) == ["mllp"]


def test_an_operator_without_identifiers_cannot_open_edit(fake):
    at = _logged_in("ada", "Dead letters")
    assert "EVERYMAN" not in _text(at)  # masked by default, even for an admin
    assert fake.audited == []
    at.checkbox[0].check().run()
    assert "EVERYMAN" in _text(at)
    [(user, action, _, resources)] = fake.audited  # written before the identifiers were shown
    assert (user, action) == ("ada", "unmask dead letter")
    assert resources[0].startswith("dead-letter/")
    at.run()
    assert len(fake.audited) == 1  # once per session and letter, not per rerun


def test_no_audit_log_no_identifiers(fake):
    fake.audit_down = True
    at = _logged_in("ada", "Dead letters")
    at.checkbox[0].check().run()
    assert "EVERYMAN" not in _text(at)
    assert "audit log is unavailable" in _text(at)


def test_the_audit_page_shows_who_accessed_a_patient_to_admins_only(fake):
    at = _logged_in("ada", "Audit")
    at.text_input[0].input("MERCY|100001").run()
    next(b for b in at.button if b.label == "Show accesses").click().run()
    assert fake.audit_reads[0][0] == "MERCY|100001"
    frame = _frames(at)[0]
    assert list(frame["principal"]) == ["jwt:dr-who"]
    assert list(frame["resources"]) == ["Observation/k2"]
    viewer = _logged_in("vic", "Audit")
    assert "for administrators" in _text(viewer)
    assert not [b for b in viewer.button if b.label == "Show accesses"]


def test_replay_selected_goes_back_to_its_topic_and_shows_the_outcome(fake):
    at = _logged_in("ian", "Dead letters")
    letter = dashboard_fakes.topic_letter()
    at.multiselect[3].select(letter.id).run()
    next(b for b in at.button if b.label == "Replay selected").click().run()
    assert not at.exception
    [replay] = fake.replayed
    assert [(u, a) for u, a, _, _ in fake.audited] == [("ian", "replay")]
    assert replay.topic == letter.source_topic
    assert replay.payload == letter.payload
    assert not replay.edited
    assert ("replay_of", letter.id.encode()) in replay.headers
    outcomes = _frames(at)[-1]
    assert list(outcomes["outcome"]) == ["processed"]  # written at offset 100; the groups are at 101


def test_a_corrected_edge_refusal_enters_the_inbound_topic(fake):
    at = _logged_in("ian", "Dead letters")
    refused = dashboard_fakes.refused_letter()
    at.selectbox[1].set_value(refused.id).run()
    area = at.text_area[0]
    area.input(area.value.replace("MSG00001", "MSG00001-FIX")).run()
    next(b for b in at.button if b.label == "Replay corrected message").click().run()
    [replay] = fake.replayed
    assert replay.edited
    assert replay.topic == "ehr.inbound.hl7v2.v1"
    assert b"MSG00001-FIX" in replay.payload
    assert b"\r" in replay.payload
    assert b"\n" not in replay.payload
    assert ("corrected_by", b"ian") in replay.headers


def test_a_correction_that_does_not_parse_is_refused(fake):
    at = _logged_in("ian", "Dead letters")
    at.selectbox[1].set_value(dashboard_fakes.refused_letter().id).run()
    at.text_area[0].input("not HL7 at all").run()
    next(b for b in at.button if b.label == "Replay corrected message").click().run()
    assert "not valid HL7 v2" in at.error[0].value
    assert fake.replayed == []


def test_index_page_counts_freshness_and_search(fake):
    at = _logged_in("ada", "Index")
    assert _frames(at)[0].iloc[0]["rows"] == 1234
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Event → searchable p95"] != "-"
    at.text_input[0].input(dashboard_fakes.PATIENT)
    at.text_input[1].input("potassium")
    next(b for b in at.button if b.label == "Search").click().run()
    assert fake.searches[0]["patient_id"] == dashboard_fakes.PATIENT
    assert "cites Observation/k2" in _text(at)


def test_index_search_needs_a_role_that_sees_identifiers(fake):
    at = _logged_in("vic", "Index")
    assert "does not allow identifiers" in _text(at)
    assert not [b for b in at.button if b.label == "Search"]


def test_models_page_lists_sessions_with_their_provider(fake):
    at = _logged_in("vic", "Models")
    row = _frames(at)[0].iloc[0]
    assert row["model"] == "all-MiniLM-L6-v2/fp32"
    assert row["execution provider"] == "CPUExecutionProvider"
    assert row["rows/s"] == 40.0
    assert row["p50"] == "55 ms"  # 40 calls in the 10-100 ms bucket: the middle one, interpolated


def test_alerts_page_counts_rules_and_override_rates(fake):
    at = _logged_in("vic", "Alerts")
    rules = _frames(at)[0]
    news2 = rules[rules["rule"] == "news2"].iloc[0]
    assert news2["alerts"] == 2
    assert news2["overridden"] == 1
    assert news2["override rate"] == "100%"
    assert next(iter(rules["rule"])) == "news2"  # noisiest first
    assistance = _frames(at)[1]
    dx = assistance[assistance["rule"] == "dx-hypertension"].iloc[0]
    assert (dx["kind"], dx["accepted"], dx["accept rate"]) == ("diagnosis", 1, "100%")
    assert dx["served"] > assistance[assistance["rule"] == "tx-hypertension"].iloc[0]["served"] > 0
    latest = _frames(at)[2]
    assert set(latest["patient"]) == {"***"}


def test_drafts_review_publishes_the_clinician_decision(fake):
    at = _logged_in("cleo", "Drafts")
    assert ":blue-background[[1]]" in _text(at)
    next(r for r in at.radio if r.label == "Decision").set_value("reject")
    at.text_input[0].input("wrong patient context")
    next(b for b in at.button if b.label == "Submit review").click().run()
    assert fake.reviews == [
        ("draft-1", {"decision": "reject", "reviewer": "cleo", "reason": "wrong patient context"})
    ]
    assert "published as clinician feedback" in at.success[0].value


def test_a_viewer_sees_the_queue_but_not_the_note(fake):
    at = _logged_in("vic", "Drafts")
    assert len(_frames(at)[0]) == 1
    assert "Potassium" not in _text(at)
    assert not [b for b in at.button if b.label == "Submit review"]


def test_the_terminology_page_lists_unknown_codes_and_an_integrator_confirms_one(fake):
    at = _logged_in("ian", "Terminology")
    [codes, _mappings] = _frames(at)
    assert list(codes["code"]) == ["K"]
    assert list(codes["seen"]) == [12]
    assert str(codes["suggestion"][0]).startswith("2823-3 Potassium (potassium")
    next(b for b in at.button if b.label == "Confirm").click().run()
    assert not at.exception, at.exception
    [body] = fake.confirmed
    assert (body["code"], body["loinc"], body["rerun"], body["on_behalf_of"]) == ("K", "2823-3", True, "ian")
    assert "version 1" in at.success[0].value


def test_a_viewer_sees_the_unknown_codes_but_cannot_map_them(fake):
    at = _logged_in("vic", "Terminology")
    assert len(_frames(at)[0]) == 1
    assert not [b for b in at.button if b.label == "Confirm"]
