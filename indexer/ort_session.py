"""ONNX Runtime adapter: the sentence-embedding session built by `make models`.

The exported graph already does mean pooling and L2 normalisation, so `embed` returns
unit vectors ready for cosine / inner-product search. Tokenization uses the model's own
`tokenizer.json` through the `tokenizers` package (no transformers at run time).

Texts are grouped by token count before they reach the graph (`length_batches`): the
encoder is compute-bound on a CPU, and padding a 20-token observation to the length of a
200-token note window in the same batch costs ten times its own work. On the HL7 corpus
chunk texts that halves the time of an embedding call (`bench/embed.py`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

from kernel.errors import ModelNotBuiltError
from kernel.onnx_session import GPU_PROVIDERS, available_providers, open_session

log = logging.getLogger(__name__)


class ModelSession(Protocol):
    """What we need of an inference session (ONNX Runtime's `InferenceSession` satisfies it)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]:
        """Run the graph."""

    def get_providers(self) -> list[str]:
        """Execution providers actually in use."""

    def get_inputs(self) -> list[Any]:
        """Graph inputs (objects with a ``name``)."""


def length_batches(lengths: Sequence[int], max_texts: int, max_tokens: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped shortest first, each group at most ``max_texts`` long and
    at most ``max_tokens`` once padded to its longest member (a longer single text still gets
    a group of its own)."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        # sorted ascending: this text is the longest of the group if it joins
        if current and (len(current) >= max_texts or (len(current) + 1) * lengths[index] > max_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def cpu_has_vnni(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has VNNI (AVX-512 or AVX), the int8 dot products the quantized model needs
    to run faster than fp32; False when unknown."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return " avx512_vnni" in flags or " avx_vnni" in flags


def choose_precision(
    configured: str, recorded: str | None, *, variants: Sequence[str], gpu: bool, vnni: bool
) -> str:
    """The embedding variant to open. An explicit setting wins; ``auto`` keeps the precision a
    collection was built with (``recorded``, from its identity), so its vectors stay comparable;
    for a new collection, int8 where the CPU has VNNI and fp32 on a GPU (dynamic int8 runs its
    quantized operators on the CPU) or an older CPU."""
    if configured != "auto":
        return configured
    if recorded in variants:
        return str(recorded)
    if "int8" in variants and vnni and not gpu:
        return "int8"
    return "fp32"


class Embedder:
    """Text → L2-normalised float32 vectors."""

    def __init__(
        self,
        model_dir: Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 0,
        batch_size: int = 64,
        batch_tokens: int = 1024,
        precision: str = "fp32",
        recorded: str | None = None,
        session: ModelSession | None = None,
    ) -> None:
        manifest_path = model_dir / "manifest.json"
        if not manifest_path.is_file():
            raise ModelNotBuiltError(f"no embedding model in {model_dir}; run `make models`")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.dimension = int(self.manifest["dimension"])
        self.name = str(self.manifest.get("name", model_dir.name))
        variants: dict[str, Any] = self.manifest.get("variants", {"fp32": {"file": "model.onnx"}})
        precision = choose_precision(
            precision,
            recorded,
            variants=list(variants),
            gpu=any(p in GPU_PROVIDERS for p in available_providers(providers)),
            vnni=cpu_has_vnni(),
        )
        self.precision = precision
        if precision not in variants:
            raise ModelNotBuiltError(
                f"no {precision} variant of the embedding model in {model_dir} (has {sorted(variants)});"
                " run `make models`"
            )
        self._batch, self._batch_tokens = batch_size, batch_tokens
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(int(self.manifest.get("max_length", 256)))
        self._tokenizer.no_padding()  # tokenizer.json may pad to a fixed length; we pad per batch
        self._session: ModelSession = session or open_session(
            model_dir / str(variants[precision]["file"]), providers, threads, model=f"{self.name}/{precision}"
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    @property
    def identity(self) -> str:
        """What a vector means: model, precision and dimension. Vectors of two identities are
        not comparable, so a collection holds one (`indexer.milvus_store` checks it)."""
        return f"{self.name}/{self.precision}/{self.dimension}"

    @property
    def providers(self) -> list[str]:
        """Execution providers in use (e.g. ``['CPUExecutionProvider']``)."""
        return self._session.get_providers()

    def batches(self, texts: Sequence[str]) -> list[list[int]]:
        """The groups of indices of ``texts`` that `embed` sends to the graph, call by call."""
        lengths = [len(e.ids) for e in self._tokenizer.encode_batch(list(texts))]
        return length_batches(lengths, self._batch, self._batch_tokens)

    def feeds(self, texts: Sequence[str]) -> Iterator[tuple[list[int], dict[str, npt.NDArray[np.int64]]]]:
        """The graph's calls for ``texts``: each group of indices (`batches`) with its padded
        ``input_ids``, ``attention_mask`` and ``token_type_ids``."""
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encodings]
        for batch in length_batches(lengths, self._batch, self._batch_tokens):
            width = max(lengths[i] for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)  # pad id 0, mask 0
            mask = np.zeros_like(ids)
            types = np.zeros_like(ids)
            for row, index in enumerate(batch):
                encoding, n = encodings[index], lengths[index]
                ids[row, :n] = encoding.ids
                mask[row, :n] = encoding.attention_mask
                types[row, :n] = encoding.type_ids
            yield batch, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts; returns an array of shape (len(texts), dimension), rows in input order."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for batch, feed in self.feeds(texts):
            result = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})
            out[batch] = np.asarray(result[0], dtype=np.float32)
        return out
