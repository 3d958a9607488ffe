"""ONNX Runtime sessions, opened the same way by every stage that runs a model.

Shared by the indexer (embeddings) and decision support (risk models): the provider choice
is a deployment setting (`CLINSTREAM_MODELS__PROVIDERS`), and a provider the machine lacks is
skipped up front rather than left to ONNX Runtime's error-and-fallback.

With onnxruntime-gpu, the CUDA and cuDNN libraries usually come from NVIDIA's pip packages
(`onnxruntime-gpu[cuda,cudnn]`, or PyTorch's), which the dynamic loader does not search:
`onnxruntime.preload_dlls()` loads them before the first CUDA session. A CUDA provider that
still cannot start makes ONNX Runtime run the session on the CPU; we log that as a warning
naming both lists, since throughput then drops by an order of magnitude.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})


@functools.cache
def _preload_gpu_libraries() -> None:
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is not None:
        preload()


def chosen_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested providers this build of ONNX Runtime has, in the requested order; the CPU
    provider when none is."""
    return [p for p in requested if p in set(available)] or ["CPUExecutionProvider"]


def open_session(model_path: Path, providers: Sequence[str], threads: int = 0) -> ort.InferenceSession:
    """An ONNX Runtime session on the first available providers, in the order given.

    Asking for CUDA on a machine without it would log an error and fall back; we skip
    unavailable providers up front and report the ones the session really uses.
    """
    chosen = chosen_providers(providers, ort.get_available_providers())
    if GPU_PROVIDERS.intersection(chosen):
        _preload_gpu_libraries()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
    used = session.get_providers()
    if chosen[0] != used[0]:
        log.warning("ONNX session %s asked for %s but runs on %s", model_path.name, chosen, used)
    else:
        log.info("ONNX session %s on %s", model_path.name, used)
    return session
