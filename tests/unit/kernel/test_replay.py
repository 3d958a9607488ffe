from datetime import UTC, datetime, timedelta

from kernel.events import DeadLetter
from kernel.replay import Selection, headers_of, plan

T0 = datetime(2025, 3, 6, 8, 0, tzinfo=UTC)


def _letter(stage="normalizer", topic="ehr.inbound.hl7v2.v1", offset=1, minutes=0):
    return DeadLetter(
        stage=stage,
        source_topic=topic,
        partition=0,
        offset=offset,
        error_type="MappingError",
        reason="r",
        payload_sha256=f"h{offset}",
        payload=b"MSH|x",
        failed_at=T0 + timedelta(minutes=minutes),
    )


def test_ids_are_stable_and_distinct():
    assert _letter().id == _letter().id
    assert _letter(offset=2).id != _letter().id
    assert DeadLetter.model_validate_json(_letter().model_dump_json()).id == _letter().id


def test_selection_by_id_stage_and_time():
    letters = [
        _letter(offset=1),
        _letter(offset=2, minutes=30),
        _letter(stage="cds", offset=3, minutes=60),
        _letter(stage="connectors.mllp", topic=None, offset=4),
    ]
    everything, refused = plan(letters + letters, Selection())
    assert [x.offset for x in everything] == [1, 2, 3]
    assert [x.offset for x in refused] == [4]
    assert [x.offset for x in plan(letters, Selection(ids=frozenset({letters[1].id})))[0]] == [2]
    assert [x.offset for x in plan(letters, Selection(stage="cds"))[0]] == [3]
    window = Selection(since=T0 + timedelta(minutes=10), until=T0 + timedelta(minutes=45))
    assert [x.offset for x in plan(letters, window)[0]] == [2]


def test_replay_headers_mark_the_replay():
    assert headers_of(_letter())[-1] == ("replay_of", _letter().id.encode())
