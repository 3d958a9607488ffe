"""Index choice and HNSW search breadth (pure functions of `indexer.milvus_store`)."""

from indexer.milvus_store import index_for, search_breadth


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
