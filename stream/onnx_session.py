"""ONNX Runtime sessions, opened the same way by every stage that runs a model.

Shared by the indexer (embeddings) and decision support (risk models): the provider choice
is a deployment setting (`CLINSTREAM_MODELS__PROVIDERS`), and a provider the machine lacks is
skipped up front rather than left to ONNX Runtime's error-and-fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)


def open_session(model_path: Path, providers: Sequence[str], threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session on the first available providers, in the order given.

    Asking for CUDA on a machine without it would log an error and fall back; we skip
    unavailable providers up front and report the ones the session really uses.
    """
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
    log.info("ONNX session %s on %s", model_path.name, session.get_providers())
    return session
