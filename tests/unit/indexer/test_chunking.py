from datetime import UTC, datetime

from indexer.app import write_plan
from indexer.chunking import chunk_id, plan_batch, plan_record
from kernel.events import FhirRecord
from kernel.rendering import render_observation
from tests.fakes import FakeEmbedder, MemoryStore
from tests.unit.indexer.fixtures import ENVELOPE, POTASSIUM, Rec, rec


def test_rendering_reads_like_a_lab_result():
    assert (
        render_observation(POTASSIUM) == "Potassium 6.2 mmol/L (critical high; ref 3.5-5.1) 2025-01-01 11:00"
    )


def test_text_values_and_preliminary_status_are_rendered():
    obs = {"code": {"text": "Culture"}, "valueString": "No growth", "status": "preliminary"}
    assert render_observation(obs) == "Culture No growth (preliminary)"


def test_plan_upserts_observations_with_deterministic_ids():
    record = FhirRecord(
        envelope=ENVELOPE, patient_id="p1", resources=[{"resourceType": "Patient", "id": "p1"}, POTASSIUM]
    )
    plan = plan_record(record)
    [chunk] = plan.upserts
    assert chunk.id == chunk_id("Observation/k1") == plan_record(record).upserts[0].id
    assert (chunk.patient_id, chunk.resource_id, chunk.resource_type) == (
        "p1",
        "Observation/k1",
        "Observation",
    )
    assert chunk.effective == int(datetime(2025, 1, 1, 11, tzinfo=UTC).timestamp())
    assert plan.keep == {"Patient/p1": 0, "Observation/k1": 1}  # a Patient with nothing to say


def test_entered_in_error_deletes_the_chunk():
    record = FhirRecord(
        envelope=ENVELOPE, patient_id="p1", resources=[{**POTASSIUM, "status": "entered-in-error"}]
    )
    plan = plan_record(record)
    assert plan.upserts == []
    assert plan.keep == {"Observation/k1": 0}


def test_batch_plan_applies_records_in_log_order_and_dead_letters_garbage():
    updated = {**POTASSIUM, "valueQuantity": {"value": 5.0, "unit": "mmol/L"}, "interpretation": []}
    plan = plan_batch(
        [
            rec([POTASSIUM], 0),
            Rec(b"{garbage", 1),
            rec([updated], 2),  # a later version of the same resource wins
            rec([{**POTASSIUM, "id": "k2"}], 3),
            rec([{**POTASSIUM, "id": "k2", "status": "entered-in-error"}], 4),
            rec([{"resourceType": "Observation"}], 5),  # no id: unreadable, not skipped silently
        ]
    )
    assert [c.text for c in plan.upserts] == ["Potassium 5 mmol/L (ref 3.5-5.1) 2025-01-01 11:00"]
    assert plan.keep == {"Observation/k1": 1, "Observation/k2": 0}
    assert [(d.offset, d.stage) for d in plan.dead_letters] == [(1, "indexer"), (5, "indexer")]
    assert plan.dead_letters[0].payload == b"{garbage"


def test_write_plan_upserts_deletes_then_flushes():
    plan = plan_batch([rec([POTASSIUM], 0), rec([{**POTASSIUM, "id": "k2", "status": "cancelled"}], 1)])
    store = MemoryStore()
    write_plan(FakeEmbedder(), store, plan)
    assert store.calls == [
        ("upsert", [chunk_id("Observation/k1")], (1, 3)),
        ("retire", {"Observation/k1": 1, "Observation/k2": 0}),
        ("flush",),
    ]
    empty = MemoryStore()
    write_plan(FakeEmbedder(), empty, plan_batch([]))
    assert empty.calls == []


def test_a_resource_held_exactly_as_planned_is_not_written_and_a_changed_one_is_written_whole():
    from indexer.app import changed_resources

    a0, a1, b0 = _chunk_of("Observation/a", 0), _chunk_of("Observation/a", 1), _chunk_of("Observation/b", 0)
    assert changed_resources([a0, a1, b0], {a0.id, a1.id}) == [b0]
    assert changed_resources([a0, a1, b0], {a0.id, b0.id}) == [a0, a1]  # a1 changed: all of a
    assert changed_resources([a0, a1, b0], set()) == [a0, a1, b0]
    assert changed_resources([], {a0.id}) == []


def _chunk_of(resource_id, n):
    from indexer.chunking import Chunk

    return Chunk(chunk_id(resource_id, n), "p", resource_id, "Observation", f"text {n}", 0, "", n)


def test_the_unchanged_check_compares_every_field_a_chunk_is_written_with_but_its_version():
    from indexer.milvus_store import COMPARED, FIELDS, _row

    assert set(COMPARED) == set(_row(_chunk_of("Observation/a", 0)))
    assert set(FIELDS) - set(COMPARED) == {"version", "vector", "sparse"}
