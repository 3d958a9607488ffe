"""The indexer's FastStream subscriber on FastStream's in-memory broker: a batch is chunked,
embedded and written (then sealed) before its offsets are committed; a record that is not a
FhirRecord is dead-lettered and the rest of the batch still indexed."""

from faststream.kafka import KafkaBroker, TestKafkaBroker

from indexer.app import register_indexer
from indexer.chunking import chunk_id
from kernel.events import DeadLetter, FhirRecord, Topics
from kernel.settings import IndexerSettings
from tests.fakes import FakeEmbedder, MemoryStore, collected
from tests.unit.indexer.fixtures import ENVELOPE, POTASSIUM

TOPICS = Topics()


def _record(*resources, patient="p1"):
    record = FhirRecord(envelope=ENVELOPE, patient_id=patient, resources=list(resources))
    return record.model_dump_json().encode()


async def test_a_batch_is_written_and_sealed_and_garbage_dead_lettered():
    broker = KafkaBroker()
    store = MemoryStore()
    register_indexer(broker, TOPICS, IndexerSettings(), FakeEmbedder(), store)
    dead = collected(broker, TOPICS.deadletter)
    cancelled = {**POTASSIUM, "id": "k2", "status": "cancelled"}
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(_record(POTASSIUM), b"{not json", _record(cancelled), topic=TOPICS.fhir)
    assert store.calls == [
        ("upsert", [chunk_id("Observation/k1")], (1, 3)),
        ("retire", {"Observation/k1": 1, "Observation/k2": 0}),
        ("flush",),
    ]
    [letter] = [DeadLetter.model_validate_json(d) for d in dead]
    assert (letter.stage, letter.error_type) == ("indexer", "ValidationError")


async def test_a_batch_of_nothing_indexable_writes_nothing():
    broker = KafkaBroker()
    store = MemoryStore()
    register_indexer(broker, TOPICS, IndexerSettings(), FakeEmbedder(), store)
    async with TestKafkaBroker(broker) as br:
        await br.publish_batch(_record(), topic=TOPICS.fhir)
    assert store.calls == []
