"""Text generation on ONNX Runtime: a decoder with KV cache, its tokenizer and chat template.

The model directory is what `make models` builds (`tools/export_llm.py`): ``model.onnx``
(optimum's decoder-with-past layout: ``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.N.key/value`` in, ``logits`` and ``present.N.key/value`` out),
``tokenizer.json``, ``chat_template.jinja`` and ``manifest.json``. Any decoder exported in
that layout, with its tokenizer and template, replaces it (`CLINSTREAM_NOTES__GENERATOR_DIR`),
so a hospital with a GPU can run a larger model without code changes.

The loop is ours (no transformers or optimum at run time): one call for the prompt, then one
call per new token feeding back the cache. Greedy decoding is the default (drafts must be
reproducible); sampling (temperature, top-p, seeded) is there for the dataset builders.
`check` compares greedy output with the PyTorch tokens recorded at export time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from kernel.errors import ModelNotBuiltError, ModelRunError
from kernel.generation import Generation, GenerationConfig, choose_token, cut_at_stop
from kernel.onnx_session import open_session

log = logging.getLogger(__name__)


class Generator:
    """A decoder-with-past ONNX model, ready to generate."""

    def __init__(
        self,
        model_dir: Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 0,
    ) -> None:
        manifest_path = model_dir / "manifest.json"
        if not manifest_path.is_file():
            raise ModelNotBuiltError(f"no generator model in {model_dir}; run `make models`")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.model_dir = model_dir
        self.name = str(self.manifest.get("name", model_dir.name))
        self.version = str(self.manifest.get("version", self.manifest.get("source_wheel_sha256", "")[:12]))
        self._tokenizer = Tokenizer.from_file(str(model_dir / str(self.manifest["tokenizer"])))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._template = env.from_string((model_dir / str(self.manifest["chat_template"])).read_text())
        self._eos = frozenset(int(i) for i in self.manifest.get("eos_token_ids", []))
        self._max_positions = int(self.manifest.get("max_positions", 2048))
        self._session = open_session(
            model_dir / str(self.manifest["model"]), providers, threads, model=self.name
        )
        self._past_names = [
            i.name for i in self._session.get_inputs() if i.name.startswith("past_key_values.")
        ]
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._past_names]
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._past_shape = (1, int(self.manifest["num_kv_heads"]), 0, int(self.manifest["head_dim"]))

    @property
    def providers(self) -> list[str]:
        """Execution providers in use."""
        return list(self._session.get_providers())

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template applied to ``messages``, ready for the assistant's turn."""
        return str(
            self._template.render(
                messages=list(messages),
                add_generation_prompt=True,
                bos_token=self.manifest.get("bos_token") or "",
                eos_token=self.manifest.get("eos_token") or "",
            )
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens in the text are recognised, none added)."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def chat(self, messages: Sequence[dict[str, str]], config: GenerationConfig) -> Generation:
        """The assistant's answer to ``messages``."""
        return self.generate_ids(self.encode(self.render(messages)), config)

    def generate_ids(self, prompt_ids: Sequence[int], config: GenerationConfig) -> Generation:
        """Continue ``prompt_ids``; stops at an end token, a stop sequence or the token budget."""
        if not prompt_ids:
            raise ValueError("empty prompt")
        budget = min(config.max_new_tokens, self._max_positions - len(prompt_ids))
        if budget <= 0:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in {self._max_positions}")
        rng = np.random.default_rng(config.seed)
        empty = np.zeros(self._past_shape, dtype=np.float32)
        past: list[Any] = [empty] * len(self._past_names)
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        seen = len(prompt_ids)
        started = time.perf_counter()
        prefill_s = 0.0
        out: list[int] = []
        finish = "length"
        text = ""
        for step in range(budget):
            feed: dict[str, Any] = {"input_ids": ids}
            if "attention_mask" in self._inputs:
                feed["attention_mask"] = np.ones((1, seen), dtype=np.int64)
            if "position_ids" in self._inputs:
                feed["position_ids"] = np.arange(seen - ids.shape[1], seen, dtype=np.int64)[None, :]
            feed.update(zip(self._past_names, past, strict=True))
            try:
                results = self._session.run(None, feed)
            except Exception as exc:  # ONNX Runtime's errors carry no patient data
                raise ModelRunError(f"generator run failed: {type(exc).__name__}") from exc
            if step == 0:
                prefill_s = time.perf_counter() - started
            logits, past = results[0], list(results[1 : 1 + len(self._present_names)])
            token = choose_token(logits[0, -1], config, rng)
            if token in self._eos:
                finish = "eos"
                break
            out.append(token)
            if config.stop:
                text, stopped = cut_at_stop(self._tokenizer.decode(out), config.stop)
                if stopped:
                    finish = "stop"
                    break
            ids = np.asarray([[token]], dtype=np.int64)
            seen += 1
        if finish != "stop":
            text = self._tokenizer.decode(out)
        decode_s = time.perf_counter() - started - prefill_s
        return Generation(text, out, len(prompt_ids), finish, prefill_s, decode_s)

    def check(self) -> list[str]:
        """Differences between greedy output and the PyTorch reference of the export (none: [])."""
        reference = json.loads((self.model_dir / "reference.json").read_text())
        problems = []
        for case in reference["prompts"]:
            if self.encode(self.render([{"role": "user", "content": case["prompt"]}])) != case["input_ids"]:
                problems.append(f"prompt tokens differ for {case['prompt']!r}")
            got = self._greedy_all(case["input_ids"], len(case["greedy"]))
            if got != case["greedy"]:
                first = next(i for i, (a, b) in enumerate(zip(got, case["greedy"], strict=False)) if a != b)
                problems.append(f"greedy tokens differ from PyTorch at {first} for {case['prompt']!r}")
        return problems

    def _greedy_all(self, prompt_ids: Sequence[int], n: int) -> list[int]:
        """``n`` greedy tokens, end tokens included (the reference did not stop at them)."""
        eos, self._eos = self._eos, frozenset()
        try:
            return self.generate_ids(prompt_ids, GenerationConfig(max_new_tokens=n)).token_ids
        finally:
            self._eos = eos


class LazyGenerator:
    """A `Generator` opened on first use, in the thread that first uses it (the notes stage's
    low-priority worker, whose nice value ONNX Runtime's pool then inherits). A stack that never
    drafts never loads the model (~0.6 GB)."""

    def __init__(self, model_dir: Path, *, providers: Sequence[str], threads: int = 0) -> None:
        manifest_path = model_dir / "manifest.json"
        if not manifest_path.is_file():
            raise ModelNotBuiltError(f"no generator model in {model_dir}; run `make models`")
        manifest = json.loads(manifest_path.read_text())
        self.name = str(manifest.get("name", model_dir.name))
        self.version = str(manifest.get("version", manifest.get("source_wheel_sha256", "")[:12]))
        self._args = (model_dir, tuple(providers), threads)
        self._loaded: Generator | None = None
        self._lock = threading.Lock()

    def _get(self) -> Generator:
        with self._lock:
            if self._loaded is None:
                model_dir, providers, threads = self._args
                self._loaded = Generator(model_dir, providers=providers, threads=threads)
            return self._loaded

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """See `Generator.render`."""
        return self._get().render(messages)

    def chat(self, messages: Sequence[dict[str, str]], config: GenerationConfig) -> Generation:
        """See `Generator.chat`."""
        return self._get().chat(messages, config)


def main(argv: Sequence[str]) -> int:
    """``python -m kernel.generator_session MODEL_DIR``: check against the export's reference."""
    generator = Generator(Path(argv[0]))
    problems = generator.check()
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{generator.name}: greedy output identical to PyTorch on the reference prompts")
    return 1 if problems else 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
