"""The notes stage's FastStream subscriber on FastStream's in-memory broker: an abnormal result and
a discharge (ADT^A03) each become one preliminary draft on the drafts topic, a replay of the same
records drafts nothing new, and an unreadable record is dead-lettered."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from faststream.kafka import KafkaBroker, TestKafkaBroker

from inference.notes.app import NotesService, register_notes
from inference.notes.draft_store import NotesStore
from kernel.events import DeadLetter, DraftNote, Envelope, FhirRecord, Topics
from stream.normalize import normalize_hl7
from tests.fakes import collected

TOPICS = Topics()
MRN = "900123"
PV1 = f"PV1|1|I|4W^412^B^MERCY||||||||||||||||V{MRN}^^^MERCY{'|' * 25}202503030415"
FEED = (
    "MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503030415||ADT^A01^ADT_A01|N-A01|P|2.5.1\r"
    "EVN|A01|202503030415\r"
    f"PID|1||{MRN}^^^MERCY^MR||TEST^NORA||19580312|F\r{PV1}\r"
    "DG1|1||J18.9^Pneumonia, unspecified organism^I10||202503030415|A\r",
    "MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|202503050830||ORU^R01^ORU_R01|N-L1|P|2.5.1\r"
    f"PID|1||{MRN}^^^MERCY^MR||TEST^NORA||19580312|F\r{PV1}\r"
    f"OBR|1|ORD{MRN}|FIL{MRN}^LIS|80048^Basic metabolic panel^C4|||202503050830\r"
    "OBX|1|NM|2160-0^Creatinine^LN||2.4|mg/dL^mg/dL^UCUM|0.6-1.1|H|||F|||202503050830\r",
    "MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503070900||ADT^A03^ADT_A03|N-A03|P|2.5.1\r"
    "EVN|A03|202503070900\r"
    f"PID|1||{MRN}^^^MERCY^MR||TEST^NORA||19580312|F\r{PV1}|202503070900\r",
)


def _records():
    out = []
    for n, text in enumerate(FEED):
        result = normalize_hl7(text, tz=UTC)
        envelope = Envelope(
            source_system="ADT^MERCY",
            source_message_id=f"N{n}",
            content_hash=str(n),
            received_at=datetime(2025, 3, 7, 9, tzinfo=UTC),
            trace_id=f"t{n}",
        )
        record = FhirRecord(envelope=envelope, patient_id=result.patient_id, resources=result.resources)
        out.append(record.model_dump_json().encode())
    return out


def _service(tmp_path, executor, **options):
    """A template-only drafting service on its own store, its clock just after the discharge."""
    return NotesService(
        store=NotesStore(tmp_path / "notes.db"),
        generator=None,
        executor=executor,
        clock=lambda: datetime(2025, 3, 7, 9, 5, tzinfo=UTC),
        **options,
    )


async def test_a_result_and_a_discharge_are_drafted_once_and_garbage_dead_lettered(tmp_path):
    with ThreadPoolExecutor(1) as executor:
        service = _service(tmp_path, executor)
        broker = KafkaBroker()
        register_notes(broker, TOPICS, service)
        drafts, dead = collected(broker, TOPICS.drafts), collected(broker, TOPICS.deadletter)
        records = _records()
        async with TestKafkaBroker(broker) as br:
            await br.publish_batch(*records, b"{not json", topic=TOPICS.fhir)
            await br.publish_batch(*records, topic=TOPICS.fhir)  # redelivered: nothing new to draft
    notes = [DraftNote.model_validate_json(d) for d in drafts]
    assert [(n.kind, n.anchor.split("/")[0], n.status) for n in notes] == [
        ("lab-interpretation", "DiagnosticReport", "preliminary"),  # the abnormal creatinine
        ("discharge-summary", "Encounter", "preliminary"),
    ]
    assert {n.document["docStatus"] for n in notes} == {"preliminary"}
    [letter] = [DeadLetter.model_validate_json(d) for d in dead]
    assert (letter.stage, letter.error_type) == ("notes", "ValidationError")
    assert all(service.store.draft(n.id) is not None for n in notes)


async def test_a_discharge_in_the_same_batch_as_the_stay_sees_all_of_it(tmp_path):
    """The batch's records reach the chart store only after the commit: a discharge in the same
    batch as its admission and results still drafts from all of them, and a record's checks
    see the batch's earlier changes (the stay in progress, then finished)."""
    with ThreadPoolExecutor(1) as executor:
        service = _service(tmp_path, executor, on_events=frozenset({"discharge-summary"}))
        broker = KafkaBroker()
        register_notes(broker, TOPICS, service)
        drafts = collected(broker, TOPICS.drafts)
        async with TestKafkaBroker(broker) as br:
            await br.publish_batch(*_records(), topic=TOPICS.fhir)
    [note] = [DraftNote.model_validate_json(d) for d in drafts]
    assert note.kind == "discharge-summary"
    from inference.notes.draft_docs import note_text

    text = note_text(note.document)
    assert "Creatinine" in text
    assert "2.4" in text
    assert "Pneumonia" in text
    assert len(service.store.chart(note.patient_id).resources) >= 4
