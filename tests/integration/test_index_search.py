"""Real ONNX embeddings into a Milvus Lite file: patient isolation in dense, BM25 and hybrid search,
idempotent upserts, shrinking and retracted resources, refusing an old collection layout or
another embedding; int8 vectors close to fp32."""

import asyncio
import re
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from pymilvus import MilvusClient

from indexer.app import write_plan
from indexer.chunking import Chunk, chunk_id, plan_batch, resource_chunks
from indexer.milvus_store import EMBEDDING_PROPERTY, MilvusStore, connect
from indexer.ort_session import Embedder
from indexer.query import ContextualQuery, build_filter
from kernel.hl7v2.parser import decode_payload
from stream.convert import convert_text
from tests.conftest import hl7_corpus_files
from tests.integration.processes import MilvusServer


def _chunk(patient, n, text):
    ref = f"Observation/{patient}-{n}"
    return Chunk(
        chunk_id(ref),
        patient,
        ref,
        "Observation",
        text,
        int(datetime(2025, 3, n, tzinfo=UTC).timestamp()),
        f"2025-03-0{n}",
    )


@pytest.fixture
def store(tmp_path, embedder):
    client = connect(None, lite_path=tmp_path / "milvus" / "test.db")
    s = MilvusStore(client, "chunks", embedder.dimension)
    s.ensure_collection()
    yield s
    client.close()


def test_embedding_model_is_the_real_one(embedder):
    vectors = embedder.embed(["Potassium 6.4 mmol/L", "serum potassium high", "Hemoglobin 13.1 g/dL"])
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_patient_scoped_search_isolation_and_idempotence(store, embedder):
    a = [_chunk("pa", 1, "Potassium 6.4 mmol/L (critical high)"), _chunk("pa", 2, "Hemoglobin 13.1 g/dL")]
    b = [_chunk("pb", 1, "Potassium 4.1 mmol/L"), _chunk("pb", 2, "Sodium 139 mmol/L")]
    for chunks in (a, b, a):  # the third write is a replay
        store.upsert(chunks, embedder.embed([c.text for c in chunks]))
    store.flush()
    assert store.count() == 4
    query = ContextualQuery(embedder, store)
    hits = query.search("pa", "potassium level", k=5)
    assert hits[0].resource_id == "Observation/pa-1"
    assert all(h.resource_id.startswith("Observation/pa-") for h in hits)
    dated = query.search("pb", "potassium", k=5, since=datetime(2025, 3, 2, tzinfo=UTC))
    assert [h.resource_id for h in dated] == ["Observation/pb-2"]
    assert store.existing([a[0].id, b[1].id, chunk_id("Observation/none")]) == {a[0].id, b[1].id}
    store.retire({a[0].resource_id: 0})
    store.flush()
    assert store.count(build_filter("pa")) == 1
    assert store.existing([a[0].id, a[1].id]) == {a[1].id}
    assert "Observation/pa-1" not in [h.resource_id for h in query.search("pa", "potassium", k=5)]


def _write(store, embedder, resources, patient, message_id="M1"):
    from kernel.events import Envelope, FhirRecord

    envelope = Envelope(
        source_system="A^B",
        source_message_id=message_id,
        content_hash="h",
        received_at=datetime(2025, 1, 1, tzinfo=UTC),
        trace_id="t",
    )
    plan = plan_batch([_Rec(FhirRecord(envelope=envelope, patient_id=patient, resources=resources))])
    write_plan(embedder, store, plan)
    return plan


class _Rec:
    def __init__(self, record):
        self.value = record.model_dump_json().encode()
        self.topic, self.partition, self.offset = "ehr.fhir.v1", 0, 0


def _corpus_patients(count=4):
    """The resources of the corpus patients with the most resources, by patient id."""
    by_patient: dict[str, dict[str, dict]] = {}
    for path in hl7_corpus_files():
        for item in convert_text(decode_payload(path.read_bytes()), tz=UTC):
            if item.bundle is None:
                continue
            resources = [e["resource"] for e in item.bundle["entry"]]
            patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
            for r in resources:
                by_patient.setdefault(patient, {})[f"{r['resourceType']}/{r['id']}"] = r
    ranked = sorted(by_patient.items(), key=lambda kv: -len(kv[1]))[:count]
    return {p: list(rs.values()) for p, rs in ranked}


def test_corpus_records_hybrid_bm25_and_dense_stay_within_the_patient(store, embedder):
    patients = _corpus_patients()
    for patient, resources in patients.items():
        _write(store, embedder, resources, patient)
    total = store.count()
    assert total >= 40
    query = ContextualQuery(embedder, store)
    for patient, resources in patients.items():
        own = {f"{r['resourceType']}/{r['id']}" for r in resources}
        word = _rarest_word(store_text(store, patient))  # BM25 needs a word the record has
        for mode in ("hybrid", "dense", "bm25"):
            for question in ("medication allergy result", word):
                hits = query.search(patient, question, k=10, mode=mode)
                assert {h.resource_id for h in hits} <= own, (mode, question)
            assert query.search(patient, word, k=10, mode=mode), mode
    # BM25 finds an exact word of one resource (a drug, a test) at the top; hybrid keeps it near.
    patient = next(iter(patients))
    rare = _rarest_word(store_text(store, patient))
    top = query.search(patient, rare, k=3, mode="bm25")[0]
    assert rare in top.text.lower()
    assert any(rare in h.text.lower() for h in query.search(patient, rare, k=3, mode="hybrid"))
    for patient, resources in patients.items():  # the timeline: one line per resource, newest first
        own = {f"{r['resourceType']}/{r['id']}" for r in resources}
        entries = query.timeline(patient)
        ids = [e.resource_id for e in entries]
        assert len(ids) == len(set(ids))
        assert set(ids) <= own
        dated = [e.effective for e in entries if e.effective]
        assert dated == sorted(dated, reverse=True)
        assert [e.effective for e in entries[len(dated) :]] == [0] * (len(entries) - len(dated))
    for patient, resources in patients.items():  # a replay of everything changes nothing
        _write(store, embedder, resources, patient)
    assert store.count() == total


def store_text(store, patient):
    rows = store._client.query(store.collection, filter=build_filter(patient), output_fields=["text"])
    return [r["text"] for r in rows]


def _rarest_word(texts):
    from collections import Counter

    words = Counter(w.lower() for t in texts for w in re.findall(r"[A-Za-z]{6,}", t))
    return min(words, key=lambda w: (words[w], w))


def test_a_shorter_note_drops_its_old_chunks_and_a_retracted_one_disappears(store, embedder):
    import base64

    def note(text, status="current"):
        data = base64.b64encode(text.encode()).decode()
        return {
            "resourceType": "DocumentReference",
            "id": "d1",
            "status": status,
            "type": {"text": "Discharge summary"},
            "content": [{"attachment": {"contentType": "text/plain", "data": data}}],
        }

    long = "HPI:\nchest pain\nPLAN:\n" + " ".join(f"word{i}" for i in range(400))
    _write(store, embedder, [note(long)], "pa")
    by_resource = 'resource_id == "DocumentReference/d1"'
    assert store.count(by_resource) == 5  # title, HPI, three PLAN windows
    _write(store, embedder, [note("HPI:\nresolved")], "pa", "M2")
    assert store.count(by_resource) == 2
    [hit] = ContextualQuery(embedder, store).search("pa", "chest pain", k=5, types=["DocumentReference"])[:1]
    assert (hit.version, hit.section) in {("M2", "HPI"), ("M2", "")}
    _write(store, embedder, [note("x", "entered-in-error")], "pa", "M3")
    assert store.count(by_resource) == 0


def test_a_repeated_resource_is_not_written_again_and_a_changed_one_is(store, embedder):
    """The patient and visit of every message come again unchanged: the store is asked which
    chunks it holds as planned, those resources are not embedded nor written, and keep citing
    the message that brought them; a resource that changed is written with the new message."""
    from indexer.app import CHUNKS_UNCHANGED

    patient = {"resourceType": "Patient", "id": "pa", "gender": "female", "birthDate": "1960-01-01"}
    potassium = {
        "resourceType": "Observation",
        "id": "k1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "Potassium"}]},
        "subject": {"reference": "Patient/pa"},
        "effectiveDateTime": "2025-03-01T08:00:00Z",
        "valueQuantity": {"value": 4.1, "unit": "mmol/L"},
    }
    before = CHUNKS_UNCHANGED._value.get()
    first = _write(store, embedder, [patient, potassium], "pa", "M1")
    assert write_plan(embedder, store, first) == 0  # the same batch again: nothing to write
    again = _write(
        store,
        embedder,
        [patient, {**potassium, "valueQuantity": {"value": 6.2, "unit": "mmol/L"}}],
        "pa",
        "M2",
    )
    assert (
        CHUNKS_UNCHANGED._value.get() - before == len(first.upserts) + 1
    )  # the repeat, then the Patient in M2
    rows = store._client.query(
        store.collection, filter='patient == "pa"', output_fields=["resource_id", "version", "text"]
    )
    versions = {r["resource_id"]: r["version"] for r in rows}
    assert versions == {"Patient/pa": "M1", "Observation/k1": "M2"}
    assert any("6.2" in r["text"] for r in rows)
    assert len(again.upserts) == 2


def test_retiring_touches_only_the_resources_that_have_chunks_beyond_their_new_count(store):
    """A batch names every resource it wrote; only those whose chunk numbered ``keep`` exists
    lose chunks (found by a primary-key probe, in pages of ids), the others keep theirs."""
    from dataclasses import replace

    from indexer.milvus_store import PROBE_IDS

    def chunks(ref, n):
        return [replace(_chunk("pa", 1, f"{ref} part {i}"), id=chunk_id(ref, i), resource_id=ref, chunk_no=i)
                for i in range(n)]  # fmt: skip

    unchanged = [f"Observation/u{i}" for i in range(PROBE_IDS + 200)]
    written = [c for ref in unchanged for c in chunks(ref, 1)] + chunks("Observation/s", 4)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(len(written), store._dim)).astype(np.float32)
    store.upsert(written, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    store.flush()
    store.retire({ref: 1 for ref in unchanged} | {"Observation/s": 2, "Observation/new": 3})
    store.flush()
    assert store.count('resource_id == "Observation/s"') == 2
    assert store.existing([chunk_id("Observation/s", 1), chunk_id("Observation/s", 2)]) == {
        chunk_id("Observation/s", 1)
    }
    assert store.count() == len(unchanged) + 2


def test_a_collection_with_another_layout_is_refused(tmp_path, embedder):
    from pymilvus import DataType, MilvusClient

    from indexer.errors import VectorStoreError

    client = connect(None, lite_path=tmp_path / "milvus" / "old.db")
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=embedder.dimension)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="AUTOINDEX", metric_type="COSINE")
    client.create_collection("chunks", schema=schema, index_params=index)
    with pytest.raises(VectorStoreError, match="another layout"):
        MilvusStore(client, "chunks", embedder.dimension).ensure_collection()
    client.close()


def test_a_collection_keeps_the_embedding_it_was_built_with(tmp_path, model_dir, embedder):
    """fp32 and int8 vectors are never mixed: the int8 session is refused on the fp32 collection."""
    from indexer.errors import VectorStoreError

    int8 = Embedder(model_dir, precision="int8")
    assert int8.identity != embedder.identity
    client = connect(None, lite_path=tmp_path / "milvus" / "e.db")
    MilvusStore(client, "chunks", embedder.dimension, embedding=embedder.identity).ensure_collection()
    with pytest.raises(VectorStoreError, match="not all-MiniLM-L6-v2/int8/384"):
        MilvusStore(client, "chunks", int8.dimension, embedding=int8.identity).ensure_collection()
    MilvusStore(client, "chunks", embedder.dimension, embedding=embedder.identity).ensure_collection()
    client.close()


def test_a_new_collection_carries_its_embedding_from_the_moment_it_exists(tmp_path, model_dir):
    """Two indexers starting at once: the one that does not create the collection must never find
    it without its embedding identity (an unmarked collection reads as an older fp32 one, and an
    int8 indexer would refuse it)."""
    from pymilvus import MilvusClient

    from indexer.milvus_store import EMBEDDING_PROPERTY, _create, _text_schema

    int8 = Embedder(model_dir, precision="int8")
    client = connect(None, lite_path=tmp_path / "milvus" / "n.db")
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    MilvusStore(client, "chunks", int8.dimension)._add_fields(schema)
    _text_schema(schema, int8.dimension)
    _create(client, "chunks", schema, "FLAT", int8.identity)
    assert client.describe_collection("chunks")["properties"][EMBEDDING_PROPERTY] == int8.identity
    MilvusStore(client, "chunks", int8.dimension, embedding=int8.identity).ensure_collection()
    client.close()


def test_auto_precision_keeps_the_collections_and_picks_by_hardware_for_a_new_one(tmp_path):
    """An upgrade to the auto default must not refuse a collection an fp32 deployment built."""
    from clinstream.settings import Settings
    from clinstream.stack import open_embedder
    from indexer.ort_session import choose_precision, cpu_has_vnni

    settings = Settings(var_dir=tmp_path, models={"providers": ["CPUExecutionProvider"]})
    assert settings.models.embedding_precision == "auto"
    client = connect(None, lite_path=tmp_path / "milvus" / "a.db")
    new = open_embedder(settings, client)
    assert new.precision == choose_precision(
        "auto", None, variants=["fp32", "int8"], gpu=False, vnni=cpu_has_vnni()
    )
    built = "int8" if new.precision == "fp32" else "fp32"
    MilvusStore(
        client, settings.milvus.collection, new.dimension, embedding=f"{new.name}/{built}/{new.dimension}"
    ).ensure_collection()
    assert open_embedder(settings, client).precision == built
    client.close()


def test_int8_vectors_stay_close_to_fp32_on_corpus_text(model_dir, embedder):
    texts = [
        c.text
        for path in hl7_corpus_files()[:40]
        for item in convert_text(decode_payload(path.read_bytes()), tz=UTC)
        if item.bundle
        for entry in item.bundle["entry"]
        for c in resource_chunks(entry["resource"], "p")
    ]
    assert len(texts) > 50
    fp32 = embedder.embed(texts)
    int8 = Embedder(model_dir, precision="int8").embed(texts)
    assert float((fp32 * int8).sum(axis=1).min()) >= 0.95


def _pdf(*lines):
    """A minimal one-page PDF with ``lines`` in Helvetica, one under the other."""
    shown = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    stream = f"BT /F1 12 Tf 72 712 Td {shown} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_knowledge_base_starter_pdf_and_replacement(tmp_path, embedder):
    from indexer.knowledge_files import add_files, load_starter
    from indexer.milvus_store import KnowledgeStore

    client = connect(None, lite_path=tmp_path / "milvus" / "kb.db")
    store = KnowledgeStore(client, "kb", embedder.dimension)
    store.ensure_collection()
    from indexer.knowledge_files import STARTER

    # an older deployment held one starter document: the others are added at the next start
    (first,) = [a for a in add_files([STARTER / "news2.md"], store, embedder)]
    loaded = load_starter(store, embedder)
    assert loaded + first.chunks == store.count() >= 60
    assert load_starter(store, embedder) == 0  # nothing missing: nothing embedded again
    query = ContextualQuery(embedder, store, store)  # the record side is unused here
    [top] = query.knowledge("qSOFA respiratory rate systolic blood pressure mentation", k=1)
    assert (top.source, top.section) == ("sepsis-3.md", "qSOFA (quick SOFA)")
    assert top.citation.startswith("Singer M")
    [top] = query.knowledge("simvastatin clarithromycin", k=1, mode="bm25")
    assert top.source == "drug-interactions.md"
    assert "June 2011" in top.citation
    pdf_lines = ("Source: Local formulary 2026.", "Vancomycin trough monitoring.")
    (tmp_path / "local.pdf").write_bytes(_pdf(*pdf_lines))
    (tmp_path / "uncited.md").write_text("# Note\n\nno citation here\n")
    added = {a.path.name: a for a in add_files([tmp_path], store, embedder)}
    assert added["local.pdf"].chunks == 1
    assert "Source" in added["uncited.md"].error
    [pdf] = query.knowledge("vancomycin trough", k=1, mode="bm25")
    assert (pdf.source, pdf.citation) == ("local.pdf", "Local formulary 2026.")
    before = store.count()
    (tmp_path / "local.pdf").write_bytes(_pdf("Source: Local formulary 2027."))
    assert add_files([tmp_path / "local.pdf"], store, embedder)[0].chunks == 0
    assert store.count() == before - 1  # the new, empty version leaves nothing of the old one
    client.close()


def test_timeline_reads_past_one_query_page_of_milvus(tmp_path):
    # Milvus answers one query with at most 16,384 rows, in no order: the newest entries
    # must come from all the patient's rows, not from an arbitrary first 16,384.
    client = connect(None, lite_path=tmp_path / "milvus" / "long.db")
    store = MilvusStore(client, "long", 4)
    store.ensure_collection()
    count = 17_000
    for lo in range(0, count, 5_000):
        hi = min(count, lo + 5_000)
        chunks = [
            Chunk(
                chunk_id(f"Observation/{i}"),
                "p",
                f"Observation/{i}",
                "Observation",
                f"o{i}",
                1_600_000_000 + i,
                "",
            )
            for i in range(lo, hi)
        ]
        store.upsert(chunks, np.ones((hi - lo, 4), dtype=np.float32))
    store.flush()
    entries = ContextualQuery(None, store).timeline("p", limit=3)
    assert [e.resource_id for e in entries] == [f"Observation/{i}" for i in (16_999, 16_998, 16_997)]
    client.close()


@pytest.mark.parametrize("patient", ['quo"te\\back', "Ωmega-é", "tab\there", "line\nbreak", "😀"])
def test_any_patient_text_is_a_literal_in_the_filter(store, embedder, patient):
    """Patient ids with quotes, backslashes, non-ASCII or control characters scope a search to
    exactly that patient (JSON quoting once turned every non-ASCII id into a 503)."""
    chunks = [_chunk(patient, 1, "Potassium 6.4 mmol/L"), _chunk("other", 1, "Potassium 4.0 mmol/L")]
    store.upsert(chunks, embedder.embed([c.text for c in chunks]))
    store.flush()
    query = ContextualQuery(embedder, store)
    for mode in ("dense", "bm25", "hybrid"):
        hits = query.search(patient, "potassium", k=5, mode=mode)
        assert [h.resource_id for h in hits] == [f"Observation/{patient}-1"], mode
    assert store.count(build_filter(patient)) == 1


async def test_two_indexers_preparing_one_collection_at_once_both_start(tmp_path):
    """Two indexer instances starting together against one Milvus server (CI saw the second
    refuse to start: "cannot prepare collection"): each prepares the same new collection at
    the same moment, five times over, and both succeed with the same layout."""
    milvus = MilvusServer(tmp_path / "milvus", tmp_path / "milvus.log")
    await milvus.start()
    try:
        for n in range(5):
            barrier = threading.Barrier(2)

            def prepare(name=f"race{n}", barrier=barrier):
                client = MilvusClient(uri=milvus.uri)
                try:
                    store = MilvusStore(client, name, 8, embedding="test-model/fp32/8")
                    barrier.wait(timeout=30)
                    store.ensure_collection()
                    return client.describe_collection(name)["properties"][EMBEDDING_PROPERTY]
                finally:
                    client.close()

            found = await asyncio.gather(
                *(asyncio.to_thread(prepare) for _ in range(2)), return_exceptions=True
            )
            assert found == ["test-model/fp32/8"] * 2, found
    finally:
        milvus.stop()
