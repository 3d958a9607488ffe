"""Search latency and recall at scale on Milvus Lite (synthetic vectors, as the issue allows).

Builds a chunk collection with the production layout (patient partition key, BM25 field,
the Lite default index: FLAT),
fills it with N synthetic 384-dimension unit vectors in topic clusters over P patients,
seals it, then measures:

- patient-scoped dense search (k=10), the shape of every `POST /query`: p50/p99 latency and
  recall@10 against exact search over that patient's vectors (numpy);
- unscoped dense search over the whole collection (the shape of a knowledge-base search):
  p50/p99 and recall@10 against exact search over all N.

Milvus Lite 3.x is pure Python and walks every row in Python on each search (to drop
superseded versions), so these figures grow with the collection whatever the index. The
production path, a Milvus server with HNSW, is measured by `bench/milvus_server.py`
(`make bench-milvus-server`, 100k and 1M chunks). Embedding speed: `bench/embed.py`;
event → searchable latency: `bench/freshness.py`.

Usage: python bench/index.py [--chunks 100000] [--patients 1000] [--queries 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from synthetic import DIM, percentile, synthetic

from indexer.chunking import Chunk, chunk_id
from indexer.milvus_store import MilvusStore, connect, index_for
from indexer.query import build_filter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    vectors = synthetic(args.chunks, 200, rng)
    patients = rng.integers(0, args.patients, args.chunks)
    with tempfile.TemporaryDirectory() as tmp:
        client = connect(None, lite_path=Path(tmp) / "bench.db")
        store = MilvusStore(client, "bench", DIM, index_type=index_for(None))
        store.ensure_collection()
        start = time.perf_counter()
        for lo in range(0, args.chunks, 5_000):
            hi = min(lo + 5_000, args.chunks)
            chunks = [
                Chunk(
                    id=chunk_id(f"Observation/{i}"),
                    patient_id=f"p{patients[i]}",
                    resource_id=f"Observation/{i}",
                    resource_type="Observation",
                    text=f"synthetic chunk {i}",
                    effective=0,
                    effective_text="",
                )
                for i in range(lo, hi)
            ]
            store.upsert(chunks, vectors[lo:hi])
        store.flush()
        load_s = time.perf_counter() - start
        queries = synthetic(args.queries, 200, rng)
        scoped_ms, scoped_recall, global_ms, global_recall = [], [], [], []
        for q in queries:
            patient = int(rng.integers(0, args.patients))
            mine = np.flatnonzero(patients == patient)
            exact = {f"Observation/{i}" for i in mine[np.argsort(-(vectors[mine] @ q))[:10]]}
            t = time.perf_counter()
            hits = store.search(q, build_filter(f"p{patient}"), 10, mode="dense")
            scoped_ms.append((time.perf_counter() - t) * 1000)
            scoped_recall.append(len({h.resource_id for h in hits} & exact) / max(1, min(10, len(mine))))
            exact_all = {f"Observation/{i}" for i in np.argsort(-(vectors @ q))[:10]}
            t = time.perf_counter()
            hits = store.search(q, "", 10, mode="dense")
            global_ms.append((time.perf_counter() - t) * 1000)
            global_recall.append(len({h.resource_id for h in hits} & exact_all) / 10)
        client.close()
    print(
        f"{args.chunks} chunks, {args.patients} patients, dim {DIM}, Milvus Lite, index {index_for(None)};"
        f" loaded and sealed in {load_s:.1f} s"
    )
    for label, ms, recall in (
        ("patient-scoped search k=10 ", scoped_ms, scoped_recall),
        ("whole-collection search k=10", global_ms, global_recall),
    ):
        print(
            f"{label}: p50 {statistics.median(ms):6.2f} ms  p99 {percentile(ms, 99):6.2f} ms"
            f"  recall@10 vs exact {statistics.mean(recall):.3f}  ({args.queries} queries)"
        )


if __name__ == "__main__":
    main()
