"""Synthetic embedding vectors and the percentile the scale benchmarks report (numpy only, so
`bench/milvus_server.py` can use it from its own environment)."""

from __future__ import annotations

import numpy as np

DIM = 384


def synthetic(n: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around ``clusters`` random topic centres (embeddings cluster by topic)."""
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def percentile(values: list[float], q: float) -> float:
    """The value at rank q % (nearest rank, no interpolation)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
