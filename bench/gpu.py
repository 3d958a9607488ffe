"""The CUDA execution provider: the embedding model and a risk model on a GPU, against the CPU and PyTorch.

Runs on a machine with onnxruntime-gpu and an NVIDIA GPU (CI has neither; the figures in the
README come from a lent H100). One run prints:

- the providers each session really runs on, as `kernel.onnx_session.open_session` opens it
  for the indexer (`CLINSTREAM_MODELS__PROVIDERS`, CUDA first), with the CUDA libraries loaded
  from NVIDIA's pip packages;
- embedding texts/s (median of 3 passes) of the fp32 model for the same texts and the same
  batches: ONNX Runtime on CUDA, ONNX Runtime on the CPU (--threads), and PyTorch on CUDA
  running the same weights (read back from the ONNX file into transformers' BertModel, with
  the exporter's pooling); one-text-per-call latency (the shape of a query);
- the lowest cosine between the CUDA vectors and the CPU vectors, and PyTorch's;
- a logistic risk model through `inference.cds.risk_session.OnnxRiskModel` on CUDA: its providers and
  its scores against the CPU session's.

It exits non-zero when a check fails (CUDA not used, cosine below 0.999, a risk score that
differs), so a run that prints figures is a run whose CUDA path worked.

Usage:
  python bench/gpu.py --write-texts FILE     # here: the chunk texts bench/embed.py uses
  python bench/gpu.py --model-dir DIR --texts FILE --bert-config config.json [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MIN_COSINE = 0.999
SHAPES = {  # name: (texts per call, padded tokens per call)
    "grouped (indexer default)": (64, 1024),
    "grouped, large batches": (256, 8192),
    "one text per call": (1, 1024),
}


def timed_passes(run: Callable[[], Any], passes: int = 3) -> tuple[list[float], Any]:
    run()  # warm-up: CUDA kernels and ONNX Runtime's memory arena
    seconds, result = [], None
    for _ in range(passes):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    cosines = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosines.min())


def torch_from_onnx(model_path: Path, bert_config: Path, device: str = "cuda") -> Any:
    """The exporter's `Pooled(BertModel)` on CUDA, its weights read back from the ONNX file (the
    export keeps the embedding and LayerNorm names, and stores each Linear weight transposed as
    the right operand of a MatMul named after the module)."""
    import onnx
    import torch
    from onnx import numpy_helper
    from transformers import BertConfig, BertModel

    sys.path.insert(0, str(REPO / "tools"))
    from export_embedding import Pooled

    graph = onnx.load(str(model_path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state = {
        k.removeprefix("encoder."): torch.from_numpy(v.copy())
        for k, v in weights.items()
        if k.startswith("encoder.")
    }
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and not node.input[1].startswith("encoder."):
            module = ".".join(
                node.name.strip("/").split("/")[1:-1]
            )  # /encoder/encoder/layer.0/…/query/MatMul
            state[f"{module}.weight"] = torch.from_numpy(weights[node.input[1]].T.copy())
    bert = BertModel(BertConfig.from_json_file(str(bert_config)), add_pooling_layer=False)
    bert.load_state_dict(state, strict=True)
    return Pooled(bert).eval().to(device)


def torch_embed(model: Any, embedder: Any, texts: list[str], device: str = "cuda") -> np.ndarray:
    """PyTorch, fed exactly the token ids, masks and batches the embedder's ONNX session gets."""
    import torch

    out = np.zeros((len(texts), embedder.dimension), dtype=np.float32)
    with torch.inference_mode():
        for batch, feed in embedder.feeds(texts):
            tensors = [
                torch.from_numpy(feed[k]).to(device)
                for k in ("input_ids", "attention_mask", "token_type_ids")
            ]
            out[batch] = model(*tensors).float().cpu().numpy()
    if device == "cuda":
        torch.cuda.synchronize()
    return out


def risk_model_check() -> tuple[list[str], float, float, float]:
    """(CUDA session providers, max |score difference| vs CPU, CPU and CUDA median ms per score)."""
    import onnx
    from onnx import TensorProto, helper

    from inference.cds.risk_session import OnnxRiskModel

    weights, bias = [0.05, 0.8, 0.02], -10.0
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["p"]),
            helper.make_node("Sub", ["one", "p"], ["q"]),
            helper.make_node("Concat", ["q", "p"], ["probability"], axis=1),
        ],
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 2])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, [3, 1], weights),
            helper.make_tensor("b", TensorProto.FLOAT, [1], [bias]),
            helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = {
        "id": "gpu-check",
        "version": "0.0.1",
        "title": "Logistic model built by bench/gpu.py",
        "model": "risk.onnx",
        "input": "features",
        "output": "probability",
        "output_index": 1,
        "citation": "bench/gpu.py",
        "features": [
            {"name": "hr", "analyte": "heart_rate", "window_h": 12},
            {"name": "lactate", "analyte": "lactate", "window_h": 24},
            {"name": "age", "source": "age_years"},
        ],
        "thresholds": [{"at": 0.5, "severity": "warning"}],
    }
    rows = [
        [float(hr), lac / 10, float(age)]
        for hr in range(40, 180, 7)
        for lac in range(5, 120, 9)
        for age in (20, 60, 95)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, Path(tmp) / "risk.onnx")
        (Path(tmp) / "risk.json").write_text(json.dumps(contract))
        cpu = OnnxRiskModel(Path(tmp) / "risk.json", ["CPUExecutionProvider"])
        gpu = OnnxRiskModel(Path(tmp) / "risk.json", ["CUDAExecutionProvider", "CPUExecutionProvider"])
        timings = {}
        scores = {}
        for name, session in (("cpu", cpu), ("cuda", gpu)):
            session.score(rows[0])
            per_score = []
            values = []
            for row in rows:
                start = time.perf_counter()
                values.append(session.score(row))
                per_score.append(time.perf_counter() - start)
            timings[name], scores[name] = statistics.median(per_score) * 1000, np.array(values)
        return (
            gpu.providers,
            float(np.abs(scores["cpu"] - scores["cuda"]).max()),
            timings["cpu"],
            timings["cuda"],
        )


def write_texts(path: Path, corpora: Path, limit: int) -> None:
    from bench.embed import corpus_texts

    path.write_text(json.dumps(corpus_texts(corpora, limit)))
    print(f"wrote {limit} chunk texts to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-texts", type=Path)
    parser.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    parser.add_argument("--texts", type=Path)
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--bert-config", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--torch-device", default="cuda", help="cpu: a dry run of this script without a GPU")
    args = parser.parse_args()
    if args.write_texts:
        write_texts(args.write_texts, args.corpora, args.count)
        return
    if not (args.texts and args.model_dir and args.bert_config):
        parser.error("--texts, --model-dir and --bert-config are needed to measure")

    import onnxruntime as ort

    from indexer.ort_session import Embedder

    texts: list[str] = json.loads(args.texts.read_text())
    failures: list[str] = []
    print(f"onnxruntime {ort.__version__} ({ort.get_device()}), available: {ort.get_available_providers()}")
    rates: dict[tuple[str, str], float] = {}
    latency_ms: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    embedders: dict[tuple[str, str], Embedder] = {}
    for engine, providers in (
        ("ONNX CUDA", ("CUDAExecutionProvider", "CPUExecutionProvider")),
        ("ONNX CPU", ("CPUExecutionProvider",)),
    ):
        for shape, (batch, tokens) in SHAPES.items():
            embedder = Embedder(
                args.model_dir,
                providers=providers,
                threads=args.threads,
                batch_size=batch,
                batch_tokens=tokens,
            )
            embedders[engine, shape] = embedder
            seconds, result = timed_passes(lambda e=embedder: e.embed(texts))
            rates[engine, shape] = len(texts) / statistics.median(seconds)
            if shape == "one text per call":
                latency_ms[engine] = statistics.median(seconds) / len(texts) * 1000
            vectors.setdefault(engine, result)
        print(f"{engine}: session providers {embedder.providers}")
    if embedders["ONNX CUDA", "one text per call"].providers[0] != "CUDAExecutionProvider":
        failures.append("the embedding session asked for CUDA does not run on it")

    import torch

    model = torch_from_onnx(args.model_dir / "model.onnx", args.bert_config, args.torch_device)
    for shape in SHAPES:
        seconds, result = timed_passes(
            lambda e=embedders["ONNX CUDA", shape]: torch_embed(model, e, texts, args.torch_device)
        )
        rates["PyTorch CUDA", shape] = len(texts) / statistics.median(seconds)
        if shape == "one text per call":
            latency_ms["PyTorch CUDA"] = statistics.median(seconds) / len(texts) * 1000
        vectors.setdefault("PyTorch CUDA", result)

    engines = ("ONNX CUDA", "ONNX CPU", "PyTorch CUDA")
    print(
        f"\n{len(texts)} chunk texts from the HL7 corpus;"
        f" {torch.cuda.get_device_name() if args.torch_device == 'cuda' else 'no GPU'}; CPU sessions"
        f" {args.threads} threads; torch {torch.__version__}"
    )
    print(
        f"{'texts/s (median of 3)':28}"
        + "".join(f"{e:>14}" for e in engines)
        + f"{'CUDA/PyTorch':>14}{'CUDA/CPU':>10}"
    )
    for shape in SHAPES:
        row = "".join(f"{rates[e, shape]:14.1f}" for e in engines)
        cuda = rates["ONNX CUDA", shape]
        vs_torch, vs_cpu = cuda / rates["PyTorch CUDA", shape], cuda / rates["ONNX CPU", shape]
        print(f"{shape:28}{row}{vs_torch:13.2f}x{vs_cpu:9.2f}x")
    print(f"{'ms per one-text call':28}" + "".join(f"{latency_ms[e]:14.2f}" for e in engines))
    for other in ("ONNX CPU", "PyTorch CUDA"):
        cosine = min_cosine(vectors["ONNX CUDA"], vectors[other])
        print(f"lowest cosine, ONNX CUDA vs {other}: {cosine:.6f}")
        if cosine < MIN_COSINE:
            failures.append(f"cosine vs {other} {cosine:.6f} < {MIN_COSINE}")

    providers, difference, cpu_ms, cuda_ms = risk_model_check()
    print(
        f"\nrisk model (OnnxRiskModel): providers {providers};"
        f" largest score difference vs CPU {difference:.2e};"
        f" median per score: CPU {cpu_ms:.3f} ms, CUDA {cuda_ms:.3f} ms"
    )
    if providers[0] != "CUDAExecutionProvider":
        failures.append("the risk model asked for CUDA does not run on it")
    if difference > 1e-5:
        failures.append(f"risk scores differ from the CPU's by {difference}")
    if failures:
        raise SystemExit("FAILED: " + "; ".join(failures))
    print("all CUDA checks passed")


if __name__ == "__main__":
    main()
