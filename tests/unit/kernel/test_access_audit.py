"""SMART v2 scopes (kernel.access) and the audit log's records and hash chains (kernel.audit)."""

import json
from datetime import UTC, datetime

import pytest

from kernel.access import AUDIT, Access, access_of, parse_scopes, read, refs_in, write
from kernel.audit import genesis, record_hash, seal, summary, verify
from tests.fakes import query_audit_event

AT = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("scope", "reads", "writes"),
    [
        ("user/*.rs", {"Observation": True, "Condition": True, "AuditEvent": False}, {"Observation": False}),
        ("user/Observation.rs", {"Observation": True, "Condition": False}, {"Observation": False}),
        ("user/Observation.s", {"Observation": True}, {"Observation": False}),
        (
            "system/*.cruds",
            {"Observation": True, "AuditEvent": False},
            {"Observation": True, "AuditEvent": False},
        ),
        ("system/AuditEvent.rs", {"AuditEvent": True, "Observation": False}, {}),
        ("user/*.read", {"Condition": True}, {"Condition": False}),  # SMART v1
        ("user/*.write", {"Condition": False}, {"Condition": True}),
        ("user/Observation.rs?category=laboratory", {"Observation": False}, {}),  # not honoured in part
        ("user/Observation.d", {"Observation": False}, {"Observation": False}),
        ("user/observation.rs openid fhirUser launch", {"Observation": False}, {}),
        ("", {"Observation": False}, {"Observation": False}),
    ],
)
def test_scopes_grant_what_they_say(scope, reads, writes):
    access = access_of("jwt:someone", {"scope": scope})
    for kind, expected in reads.items():
        assert access.reads(kind) is expected, (scope, kind)
    for kind, expected in writes.items():
        assert access.writes(kind) is expected, (scope, kind)


def test_patient_scopes_are_kept_apart_for_the_agent_tools():
    broad, narrow = parse_scopes("patient/*.rs user/Condition.rs")
    assert narrow.reads("Observation")
    assert not broad.reads("Observation")
    agent = access_of("jwt:agent", {"scope": "patient/*.rs", "patient": "p1"})
    assert agent.patient_scoped
    assert not agent.reads("Observation")


def test_a_search_runs_only_over_the_types_the_token_reads():
    served = ("Observation", "Condition", "DocumentReference")
    everything = access_of("t", {"scope": "user/*.rs"})
    labs = access_of("t", {"scope": "user/Observation.rs"})
    assert everything.search_types([], served) == []  # no filter needed
    assert everything.search_types(["Condition"], served) == ["Condition"]
    assert labs.search_types([], served) == ["Observation"]
    assert labs.search_types(["Condition", "Observation"], served) == ["Observation"]
    assert labs.search_types(["Condition"], served) is None  # nothing to search


def test_needs_refuse_what_the_scope_does_not_grant():
    clinician = access_of("jwt:dr", {"scope": "user/*.rs"})
    service = access_of("api-token", {"scope": "system/*.cruds system/AuditEvent.rs"})
    nothing = access_of("jwt:x", {})
    assert read("Observation").refusal(clinician) is None
    assert read("Observation").refusal(nothing) is not None
    assert read("DetectedIssue").refusal(access_of("t", {"scope": "user/Observation.rs"})) is not None
    assert write("DocumentReference").refusal(clinician) is not None
    assert write("DocumentReference").refusal(service) is None
    assert write().refusal(clinician) is not None
    assert write().refusal(service) is None
    assert AUDIT.refusal(clinician) is not None
    assert AUDIT.refusal(service) is None
    assert read("Observation").refusal(None) == "missing or invalid bearer token"


def test_a_facility_claim_limits_the_patients_a_token_sees():
    mercy = access_of("jwt:dr", {"scope": "user/*.rs", "facilities": ["MERCY"]})
    assert mercy.may_see_patient("MERCY|100001") is None
    assert mercy.may_see_patient("GENERAL|100001") is not None
    assert mercy.may_see_patient("a1b2c3") is not None  # a bare key does not say its site
    assert Access("x").may_see_patient("GENERAL|1") is None  # no claim: no limit


def test_refs_in_finds_the_references_an_answer_rests_on():
    answer = {
        "text": "K 6.1 mmol/L",
        "evidence": [{"resource_id": "Observation/k1"}],
        "cites": ["Condition/c1"],
    }
    assert refs_in(answer) == {"Observation/k1", "Condition/c1"}
    assert refs_in(answer, {"Observation/k1"}) == {"Observation/k1"}


def _event(n, patient="p1", principal="jwt:dr"):
    return query_audit_event(n, patient, principal, at=AT, address="10.0.0.7")


def _chain(events, writer="w1", partition=0, start=0):
    previous, out = genesis(writer), []
    for n, event in enumerate(events):
        value = seal(event, writer=writer, seq=n, previous=previous)
        previous = record_hash(value)
        out.append((partition, start + n, value))
    return out


def test_an_audit_event_says_who_what_which_patient_and_outcome():
    event = _event(1)
    assert summary(event) == {
        "time": AT.isoformat(),
        "principal": "jwt:dr",
        "action": "POST /query",
        "patient": "p1",
        "resources": ["Observation/o1"],
        "outcome": "success",
    }
    assert event["agent"][0]["network"]["address"] == "10.0.0.7"


def test_an_intact_chain_verifies_and_any_tampering_breaks_it():
    records = _chain([_event(n) for n in range(5)])
    found = verify(records)
    assert (found.events, found.chains, found.breaks) == (5, 1, [])

    changed = list(records)
    doc = json.loads(changed[2][2])
    doc["agent"][0]["who"]["identifier"]["value"] = "jwt:someone-else"
    changed[2] = (0, 2, json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    assert [b.offset for b in verify(changed).breaks] == [3]  # the next event no longer links

    deleted = records[:2] + records[3:]
    assert [b.offset for b in verify(deleted).breaks] == [3]

    swapped = [records[0], records[2], records[1], *records[3:]]
    assert verify(swapped).breaks

    assert [b.reason for b in verify([(0, 0, b"not json")]).breaks] == ["not JSON"]
    unsealed = json.dumps(_event(9)).encode()
    assert [b.reason for b in verify([(0, 0, unsealed)]).breaks] == ["no chain link"]


def test_two_writers_interleaved_in_one_partition_each_keep_their_chain():
    first = _chain([_event(n) for n in range(3)], writer="api-1")
    second = _chain([_event(n, patient="p2") for n in range(3)], writer="api-2")
    interleaved = [r for pair in zip(first, second, strict=True) for r in pair]
    interleaved = [(0, n, value) for n, (_, _, value) in enumerate(interleaved)]
    found = verify(interleaved)
    assert (found.chains, found.breaks) == (2, [])
    assert verify(interleaved[:1] + interleaved[2:]).breaks  # a writer's first event gone
    assert verify(interleaved[:2] + interleaved[3:]).breaks  # one in the middle


def test_aiokafka_debug_lines_keep_sizes_not_record_contents():
    import logging

    from kernel.kafka import guard_payload_logs

    guard_payload_logs()
    guard_payload_logs()  # once only
    logger = logging.getLogger("aiokafka.producer.producer")
    assert sum(type(f).__name__ == "PayloadRedaction" for f in logger.filters) == 1
    record = logger.makeRecord(
        logger.name, logging.DEBUG, "producer.py", 500, "Sending (key=%s value=%s) to %s",
        (b"MERCY-100001", b"PID|||100001^^^MERCY||EVERYMAN^ADAM", "topic-0"), None,
    )  # fmt: skip
    assert logger.filter(record)
    text = record.getMessage()
    assert "EVERYMAN" not in text
    assert "100001" not in text
    assert "value 35 bytes" in text
