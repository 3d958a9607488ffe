"""Index choice and HNSW search breadth (pure functions of `indexer.milvus_store`)."""

import pytest
from pymilvus import MilvusException

from indexer.errors import VectorStoreError
from indexer.milvus_store import MilvusStore, index_for, search_breadth


def test_flat_on_lite_hnsw_on_a_server_unless_configured():
    assert index_for(None) == "FLAT"
    assert index_for("http://milvus:19530") == "HNSW"
    assert index_for("http://milvus:19530", "IVF_FLAT") == "IVF_FLAT"


def test_an_unscoped_search_looks_wider_than_a_patient_scoped_one():
    scoped = search_breadth('patient == "p1"', 10)
    unscoped = search_breadth("", 10)
    assert (scoped, unscoped) == (128, 512)
    assert search_breadth('patient == "p1"', 300) == 300  # never below k
    assert search_breadth("", 1000) == 1000


class _RestartedMilvus:
    """A client whose collection was released by a Milvus restart until it is loaded again."""

    def __init__(self, fails_after_load=False):
        self.loaded, self.loads, self.fails_after_load = False, 0, fails_after_load

    def load_collection(self, name):
        self.loads += 1
        self.loaded = not self.fails_after_load

    def query(self, collection, filter, output_fields):
        if not self.loaded:
            raise MilvusException(code=101, message=f"Collection '{collection}' is in state 'released'")
        return [{"count(*)": 7}]


def _store(client):
    return MilvusStore(client, "chunks", 384)


def test_a_released_collection_is_loaded_again_and_the_read_answers():
    client = _RestartedMilvus()
    assert _store(client).count() == 7
    assert client.loads == 1


def test_a_collection_that_stays_released_is_our_typed_error():
    client = _RestartedMilvus(fails_after_load=True)
    with pytest.raises(VectorStoreError):
        _store(client).count()
    assert client.loads == 1  # one try, not a loop
