"""Search latency and recall on a real Milvus server (C++), at 100k and 1M chunks.

Milvus Lite 3.x, the embedded default, is pure Python: every search walks every row of the
collection in Python to drop superseded and deleted versions (about 1.3 µs a row, whatever
the index or filter), so its latency grows with the collection (`bench/index.py`). The
production path is a Milvus server with HNSW. No Docker daemon is needed to measure it: the
`milvus` wheel on PyPI (2.3.5, "embedded Milvus") ships the C++ standalone server with its
own etcd. `make bench-milvus-server` runs this script in a separate environment with that
wheel and a pymilvus 2.3 client (our runtime needs pymilvus 3).

Milvus 2.3 has no BM25 function or sparse field, so the collection here is the dense part of
our chunk layout: primary key, `patient` as partition key, `resource_id`, `effective`, the
384-d vector; the index is ours (HNSW, M 16, efConstruction 200; search ef 128 scoped, 512
unscoped, see `indexer.milvus_store.search_breadth`). The vectors are synthetic unit
vectors in topic clusters, as in `bench/index.py`. Measured, per collection size:

- patient-scoped dense search (k=10), the shape of every `POST /query`: p50/p99 and
  recall@10 against exact search over that patient's vectors (numpy);
- whole-collection dense search (k=10), at each --global-ef: p50/p99 and recall@10 against
  exact search.

Usage (via make): make bench-milvus-server ARGS="--sizes 100000 1000000"
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import milvus
import numpy as np
from pymilvus import Collection, CollectionSchema, DataType, FieldSchema, connections, utility
from synthetic import DIM, percentile, synthetic

HNSW_BUILD = {"M": 16, "efConstruction": 200}  # indexer.milvus_store.HNSW_BUILD
HNSW_SEARCH = {"ef": 128}  # indexer.milvus_store.search_breadth for a patient-scoped search


def run(size: int, patients: int, queries: int, global_ef: list[int], rng: np.random.Generator) -> None:
    vectors = synthetic(size, 200, rng)
    owner = rng.integers(0, patients, size)
    fields = [
        FieldSchema("id", DataType.INT64, is_primary=True),
        FieldSchema("patient", DataType.VARCHAR, max_length=64, is_partition_key=True),
        FieldSchema("resource_id", DataType.VARCHAR, max_length=128),
        FieldSchema("effective", DataType.INT64),
        FieldSchema("vector", DataType.FLOAT_VECTOR, dim=DIM),
    ]
    name = f"chunks_{size}"
    if utility.has_collection(name):
        utility.drop_collection(name)
    collection = Collection(name, CollectionSchema(fields), num_partitions=16)
    start = time.perf_counter()
    for lo in range(0, size, 10_000):
        hi = min(lo + 10_000, size)
        ids = list(range(lo, hi))
        rows = [ids, [f"p{owner[i]}" for i in ids], [f"Observation/{i}" for i in ids], [0] * len(ids)]
        collection.insert([*rows, vectors[lo:hi]])
    collection.flush()
    loaded = time.perf_counter() - start
    collection.create_index("vector", {"index_type": "HNSW", "metric_type": "COSINE", "params": HNSW_BUILD})
    utility.wait_for_index_building_complete(name)
    collection.load()
    indexed = time.perf_counter() - start - loaded
    params = {"metric_type": "COSINE", "params": HNSW_SEARCH}
    for q in synthetic(20, 200, rng):  # warm-up
        collection.search([q], "vector", params, limit=10, expr='patient == "p0"')
    scoped_ms: list[float] = []
    scoped_recall: list[float] = []
    global_ms: dict[int, list[float]] = {ef: [] for ef in global_ef}
    global_recall: dict[int, list[float]] = {ef: [] for ef in global_ef}
    for q in synthetic(queries, 200, rng):
        patient = int(rng.integers(0, patients))
        mine = np.flatnonzero(owner == patient)
        exact = set(mine[np.argsort(-(vectors[mine] @ q))[:10]].tolist())
        t = time.perf_counter()
        hits = collection.search([q], "vector", params, limit=10, expr=f'patient == "p{patient}"')[0]
        scoped_ms.append((time.perf_counter() - t) * 1000)
        scoped_recall.append(len(set(hits.ids) & exact) / max(1, min(10, len(mine))))
        exact_all = set(np.argsort(-(vectors @ q))[:10].tolist())
        for ef in global_ef:
            t = time.perf_counter()
            hits = collection.search(
                [q], "vector", {"metric_type": "COSINE", "params": {"ef": ef}}, limit=10
            )[0]
            global_ms[ef].append((time.perf_counter() - t) * 1000)
            global_recall[ef].append(len(set(hits.ids) & exact_all) / 10)
    print(
        f"{size} chunks, {patients} patients: inserted and flushed in {loaded:.0f} s, HNSW built and loaded"
        f" in {indexed:.0f} s"
    )
    rows = [(f"  patient-scoped search k=10, ef {HNSW_SEARCH['ef']:<4}", scoped_ms, scoped_recall)]
    rows += [
        (f"  whole-collection search k=10, ef {ef:<4}", global_ms[ef], global_recall[ef]) for ef in global_ef
    ]
    for label, ms, recall in rows:
        print(
            f"{label}: p50 {statistics.median(ms):6.2f} ms  p99 {percentile(ms, 99):6.2f} ms"
            f"  recall@10 vs exact {statistics.mean(recall):.3f}  ({queries} queries)",
            flush=True,
        )
    utility.drop_collection(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--patients-per-chunk", type=float, default=0.01, help="patients = size x this")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--global-ef", type=int, nargs="+", default=[128, 512], help="ef for unscoped search")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as base:
        server = milvus.default_server
        server.set_base_dir(base)
        server.start()
        try:
            connections.connect(host="127.0.0.1", port=server.listen_port)
            print(f"Milvus server {utility.get_server_version()} (C++ standalone from the `milvus` wheel)")
            for size in args.sizes:
                run(size, max(1, int(size * args.patients_per_chunk)), args.queries, args.global_ef, rng)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
