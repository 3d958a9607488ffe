"""#28's static-embedding route, weighed: a model2vec-style static model distilled from the
MiniLM we ship, its speed beside the ONNX session's and its retrieval quality on both labelled
sets of `bench/retrieval.py`.

Distillation (model2vec's recipe, done with our own ONNX session, no model hub, no torch): every
token of MiniLM's WordPiece vocabulary goes through the fp32 graph alone (``[CLS] token [SEP]``,
the graph's mean pooling), the 30,522 vectors are reduced by PCA (--dims, default 256) and
weighted by Zipf (log(1 + rank): rarer tokens weigh more). A text's vector is then the mean of
its tokens' vectors, L2-normalised: a table lookup instead of six transformer layers.

Prints: distillation time; texts/s for the static model, MiniLM int8 and fp32 on the same corpus
chunk texts (one run, 2 threads); then recall@5 and MRR (dense, hybrid, BM25) on the Synthea
and HL7 v2 labelled sets for the static model, MiniLM int8 and fp32, judged by the sets' rules
(not by either model). The static model counts as a route only if its dense recall@5 and MRR
are within 0.02 of MiniLM fp32's on both sets.

Usage: python bench/static_tier.py [--dims 256] [--texts 3000] [--sets synthea hl7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import retrieval  # noqa: E402
from clinstream.models import embedding_dir  # noqa: E402
from indexer.chunking import resource_chunks  # noqa: E402
from indexer.ort_session import Embedder  # noqa: E402

CORPORA = REPO.parent / "shared" / "corpora"


class StaticEmbedder:
    """Token vectors looked up and averaged: the embedder interface `bench/retrieval.py` uses."""

    def __init__(self, model_dir: Path, vectors: npt.NDArray[np.float32], name: str) -> None:
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(512)
        self._tokenizer.no_padding()
        self._vectors = vectors
        self.dimension = int(vectors.shape[1])
        self.identity = f"{name}/static/{self.dimension}"

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, encoding in enumerate(self._tokenizer.encode_batch(list(texts), add_special_tokens=False)):
            if encoding.ids:
                out[row] = self._vectors[encoding.ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


def distill(model_dir: Path, dims: int) -> npt.NDArray[np.float32]:
    """One vector per vocabulary token from the fp32 graph, PCA to ``dims``, Zipf-weighted."""
    embedder = Embedder(model_dir, precision="fp32", batch_size=512, batch_tokens=4096)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    size = tokenizer.get_vocab_size()
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    session = embedder._session  # noqa: SLF001 - the graph itself, fed token ids directly
    names = {i.name for i in session.get_inputs()}
    vectors = np.zeros((size, embedder.dimension), dtype=np.float32)
    for start in range(0, size, 1024):
        ids = np.arange(start, min(start + 1024, size), dtype=np.int64)
        feed = {
            "input_ids": np.stack([np.full_like(ids, cls), ids, np.full_like(ids, sep)], axis=1),
            "attention_mask": np.ones((len(ids), 3), dtype=np.int64),
            "token_type_ids": np.zeros((len(ids), 3), dtype=np.int64),
        }
        vectors[ids] = np.asarray(session.run(None, {k: v for k, v in feed.items() if k in names})[0])
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ components[: min(dims, vectors.shape[1])].T
    weights = np.log1p(np.arange(size, dtype=np.float32))[:, None]
    return np.asarray(reduced * weights, dtype=np.float32)


def speed(embedder: object, texts: list[str], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        embedder.embed(texts)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - started)
    return len(texts) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--texts", type=int, default=3000)
    parser.add_argument("--sets", nargs="+", choices=("synthea", "hl7"), default=["synthea", "hl7"])
    args = parser.parse_args()
    model_dir = embedding_dir()
    started = time.perf_counter()
    static = StaticEmbedder(model_dir, distill(model_dir, args.dims), "all-MiniLM-L6-v2-distilled")
    print(f"distilled {static.identity} from the fp32 graph in {time.perf_counter() - started:.1f} s")
    records = retrieval.hl7_records(args.corpora)
    texts = [c.text for p, rs in records.items() for r in rs for c in resource_chunks(r, p)][: args.texts]
    int8 = Embedder(model_dir, precision="int8", threads=2)
    fp32 = Embedder(model_dir, precision="fp32", threads=2)
    rates = {name: speed(e, texts) for name, e in (("static", static), ("int8", int8), ("fp32", fp32))}
    print(
        f"{len(texts)} corpus chunk texts, median of 3: static {rates['static']:,.0f} texts/s,"
        f" MiniLM int8 {rates['int8']:,.0f}, fp32 {rates['fp32']:,.0f}"
        f" (static x{rates['static'] / rates['int8']:.1f} int8, x{rates['static'] / rates['fp32']:.1f} fp32)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for label, embedder in (("static", static), ("int8", int8), ("fp32", fp32)):
            folder = Path(tmp) / label
            folder.mkdir()
            if "synthea" in args.sets:
                names = {t for t, _ in retrieval.TEMPLATES[-retrieval.NAMED :]}
                synthea = retrieval.synthea_records(args.corpora)
                retrieval.evaluate("synthea", synthea, retrieval.TEMPLATES, names, embedder, 3, folder)  # type: ignore[arg-type]
            if "hl7" in args.sets:
                retrieval.evaluate("hl7", records, retrieval.HL7_TEMPLATES, set(), embedder, 3, folder)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
