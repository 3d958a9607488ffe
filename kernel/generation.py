"""What a generator is asked and what it answers, and the pure steps of its decoding loop.

The ONNX Runtime loop (`kernel.generator_session`) and any other generator a
deployment plugs in produce a `Generation` for a `GenerationConfig`; drafting reads only these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """How to decode. ``temperature`` 0 is greedy; otherwise nucleus sampling with ``top_p``."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Generation:
    """What one generation produced, with its cost."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish: str  # "eos", "stop" (a stop sequence), "length"
    prefill_s: float
    decode_s: float
    completion_tokens: int | None = None  # a server's count, when it does not return token ids

    @property
    def generated(self) -> int:
        """Tokens generated: the server's count, else the ids."""
        return self.completion_tokens if self.completion_tokens is not None else len(self.token_ids)


def choose_token(logits: npt.NDArray[np.float32], config: GenerationConfig, rng: np.random.Generator) -> int:
    """The next token from the last position's ``logits``: argmax, or a top-p sample."""
    if config.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / config.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    order = np.argsort(-probs)
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, config.top_p)) + 1]
    kept = probs[keep] / probs[keep].sum()
    return int(rng.choice(keep, p=kept))


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop sequence in it, and whether one was found."""
    cut = min((i for s in stops if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
