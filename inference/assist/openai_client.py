"""An OpenAI-compatible chat server as the generator of cited answers (llama.cpp's server, vLLM,
Ollama, a hospital's hosted model): `POST {base_url}/chat/completions`.

Greedy decoding (temperature 0) unless the config says otherwise. Every failure (connection,
timeout, an HTTP error, an answer without text) is a `ModelRunError`: the caller answers 503 and
never ships an uncited answer. The request carries patient data, so the base URL must point at a
server inside the hospital's boundary; the API key is a secret and never logged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from kernel.errors import ModelRunError
from kernel.generation import Generation, GenerationConfig


class OpenAIChat:
    """A chat model behind an OpenAI-compatible server (blocking: call it from a worker thread)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._client = client or httpx.Client(timeout=timeout_s, headers=headers)
        self.name = f"openai:{model or 'default'}"
        self.version = ""

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def chat(self, messages: Sequence[dict[str, str]], config: GenerationConfig) -> Generation:
        """The server's answer to ``messages``."""
        body: dict[str, Any] = {
            "model": self._model,
            "messages": list(messages),
            "max_tokens": config.max_new_tokens,
            "temperature": config.temperature,
        }
        if config.temperature > 0:
            body["top_p"] = config.top_p
        if config.seed is not None:
            body["seed"] = config.seed
        if config.stop:
            body["stop"] = list(config.stop)
        started = time.perf_counter()
        try:
            response = self._client.post(self._url, json=body)
            response.raise_for_status()
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelRunError(f"chat server {type(exc).__name__}") from exc
        if not isinstance(text, str):
            raise ModelRunError("chat server answered without text")
        usage = data.get("usage") or {}
        elapsed = time.perf_counter() - started
        return Generation(
            text=text.strip(),
            token_ids=[],
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            finish={"length": "length", "stop": "eos"}.get(str(choice.get("finish_reason")), "eos"),
            prefill_s=0.0,
            decode_s=elapsed,
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
