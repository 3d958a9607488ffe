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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort
from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger(__name__)

GPU_PROVIDERS = frozenset({"CUDAExecutionProvider", "TensorrtExecutionProvider"})

# What the ops dashboard's Models page reads: which sessions are open on which provider, and
# how long each call to the graph takes. A call is a batch of texts for the embedder, one
# token for the generator (after the prompt), a batch of rows for a risk model.
SESSIONS = Gauge("clinstream_model_sessions", "Open ONNX Runtime sessions", ["model", "file", "provider"])
RUN_SECONDS = Histogram(
    "clinstream_model_run_seconds",
    "Duration of one ONNX Runtime call",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
RUN_ROWS = Counter("clinstream_model_rows", "Rows (batch entries) sent through a model", ["model"])


@functools.cache
def _preload_gpu_libraries() -> None:
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is not None:
        preload()


def chosen_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """The requested providers this build of ONNX Runtime has, in the requested order; the CPU
    provider when none is."""
    return [p for p in requested if p in set(available)] or ["CPUExecutionProvider"]


def available_providers(requested: Sequence[str]) -> list[str]:
    """The providers a session asking for ``requested`` would get on this machine (`chosen_providers`)."""
    return chosen_providers(requested, ort.get_available_providers())


class MeteredSession:
    """An ONNX Runtime session whose calls are timed into Prometheus (`RUN_SECONDS`, `RUN_ROWS`)."""

    def __init__(self, session: ort.InferenceSession, model: str) -> None:
        self.session = session
        self.model = model
        self._seconds = RUN_SECONDS.labels(model)
        self._rows = RUN_ROWS.labels(model)

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        """Run the graph (`InferenceSession.run`), timing the call."""
        started = time.perf_counter()
        result: list[Any] = self.session.run(output_names, input_feed)
        self._seconds.observe(time.perf_counter() - started)
        first = next(iter(input_feed.values()), None)
        shape = getattr(first, "shape", ())
        self._rows.inc(int(shape[0]) if shape else 1)
        return result

    def get_providers(self) -> list[str]:
        """Execution providers in use."""
        return list(self.session.get_providers())

    def get_inputs(self) -> list[Any]:
        """Graph inputs."""
        return list(self.session.get_inputs())

    def get_outputs(self) -> list[Any]:
        """Graph outputs."""
        return list(self.session.get_outputs())


def open_session(
    model_path: Path, providers: Sequence[str], threads: int = 0, *, model: str | None = None
) -> MeteredSession:
    """An ONNX Runtime session on the first available providers, in the order given.

    Asking for CUDA on a machine without it would log an error and fall back; we skip
    unavailable providers up front and report the ones the session really uses. ``model``
    names it in the metrics (default: the model's folder).
    """
    chosen = available_providers(providers)
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
    name = model or model_path.parent.name
    SESSIONS.labels(name, model_path.name, used[0]).inc()
    return MeteredSession(session, name)
