"""ONNX Runtime adapter: the sentence-embedding session built by `make models`.

The exported graph already does mean pooling and L2 normalisation, so `embed` returns
unit vectors ready for cosine / inner-product search. Tokenization uses the model's own
`tokenizer.json` through the `tokenizers` package (no transformers at run time).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from tokenizers import Tokenizer

from indexer.errors import ModelNotBuiltError

log = logging.getLogger(__name__)


class ModelSession(Protocol):
    """What we need of an inference session (ONNX Runtime's `InferenceSession` satisfies it)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        """Run the graph."""

    def get_providers(self) -> list[str]:
        """Execution providers actually in use."""

    def get_inputs(self) -> list[Any]:
        """Graph inputs (objects with a ``name``)."""


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


class Embedder:
    """Text → L2-normalised float32 vectors."""

    def __init__(
        self,
        model_dir: Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 0,
        batch_size: int = 64,
        session: ModelSession | None = None,
    ) -> None:
        manifest_path = model_dir / "manifest.json"
        if not manifest_path.is_file():
            raise ModelNotBuiltError(f"no embedding model in {model_dir}; run `make models`")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.dimension = int(self.manifest["dimension"])
        self.name = str(self.manifest.get("name", model_dir.name))
        self.precision = str(self.manifest.get("precision", "fp32"))
        self._batch = batch_size
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(int(self.manifest.get("max_length", 256)))
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token name
        self._session: ModelSession = session or open_session(model_dir / "model.onnx", providers, threads)
        self._inputs = {i.name for i in self._session.get_inputs()}

    @property
    def providers(self) -> list[str]:
        """Execution providers in use (e.g. ``['CPUExecutionProvider']``)."""
        return self._session.get_providers()

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts in batches; returns an array of shape (len(texts), dimension)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        out: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(texts), self._batch):
            encodings = self._tokenizer.encode_batch(list(texts[start : start + self._batch]))
            feed = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
            }
            result = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
            out.append(np.asarray(result[0], dtype=np.float32))
        return np.concatenate(out)
