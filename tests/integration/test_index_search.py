"""Real ONNX embeddings into a Milvus Lite file: patient isolation, idempotent upserts, deletes."""

from datetime import UTC, datetime

import numpy as np
import pytest

from indexer.chunking import Chunk, chunk_id
from indexer.milvus_store import MilvusStore, connect
from indexer.query import ContextualQuery, build_filter


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
    store.delete([a[0].id])
    store.flush()
    assert store.count(build_filter("pa")) == 1
    assert "Observation/pa-1" not in [h.resource_id for h in query.search("pa", "potassium", k=5)]
