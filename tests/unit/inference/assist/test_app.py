"""The assistance API and its CDS Hooks services over a real chart store and the real ASGI app:
404 for an unknown patient, empty lists for one without data, 503 with Retry-After when the
model fails, cards through the one CDS Hooks endpoint, accepted diagnoses as Conditions."""

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import jwt
import pytest

from clinstream.http import build_app
from connectors.security import Authenticator
from inference.assist import cards
from inference.assist.app import AssistHooks, AssistService, accepted_conditions, assist_routes
from inference.assist.openai_client import OpenAIChat
from inference.cds.http import CdsHooksService
from inference.cds.jwks_client import CdsJwtVerifier
from inference.cds.state_store import SqliteStateStore
from kernel.audit_kafka import MemoryAuditLog
from kernel.chart_store import ChartStore
from kernel.errors import ModelRunError
from kernel.events import ClinicianFeedback
from kernel.generation import Generation, GenerationConfig
from kernel.settings import HttpSettings
from tests.unit.inference.assist.fixtures import NOW, bp, condition, med, obs, patient

SECRET = "assist-test-secret-at-least-32-bytes-long"
BASE = "http://api.test"
TOKEN = "api-token"


class Scripted:
    name = "scripted"

    def __init__(self, text="", fail=False):
        self.text, self.fail = text, fail

    def chat(self, messages, config):
        if self.fail:
            raise ModelRunError("model failed")
        return Generation(self.text, [1], 5, "eos", 0.0, 0.0)


@pytest.fixture
def service(tmp_path):
    store = ChartStore(tmp_path / "charts.sqlite")
    store.apply(
        "p1",
        [
            patient(),
            condition("Diabetes mellitus type 2 (disorder)", "44054006"),
            bp(150, 95, "2026-01-01"),
            bp(152, 96, "2026-02-01"),
            obs("2160-0", 1.1, "2025-06-01"),
            obs("2160-0", 1.9, "2026-05-01"),
            obs("33914-3", 70, "2026-05-01"),
        ],
    )
    store.apply("empty", [patient()])
    executor = ThreadPoolExecutor(1)
    svc = AssistService(
        store, executor, model=Scripted("Creatinine was 1.9 mg/dL on 2026-05-01 [E1]."), clock=lambda: NOW
    )
    yield svc
    executor.shutdown()
    store.close()


def client_of(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


def api(service):
    return client_of(build_app(TOKEN, assist_routes(service), audit=MemoryAuditLog()))


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_routes_need_the_api_token(service):
    async with api(service) as client:
        response = await client.post("/assist/diagnoses", json={"patient_id": "p1"})
    assert response.status_code == 401


async def test_diagnoses_and_treatments(service):
    async with api(service) as client:
        dx = (await client.post("/assist/diagnoses", json={"patient_id": "p1"}, headers=AUTH)).json()
        tx = (await client.post("/assist/treatments", json={"patient_id": "p1"}, headers=AUTH)).json()
    (htn,) = dx["suggestions"]
    assert htn["status"] == "suspected"
    assert htn["code"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "38341003",
        "display": "Hypertensive disorder, systemic arterial (disorder)",
    }
    assert htn["rule"] == {"id": "dx-hypertension", "version": "1.0.0"}
    assert {"resource_id", "text", "date"} <= set(htn["evidence"][0])
    assert {"source", "section", "citation"} == set(htn["citations"][0])
    starts = [s for s in tx["suggestions"] if s["kind"] == "start"]
    by_problem = {(s["for"]["coding"][0]["code"], s["medication"]["coding"][0]["display"]) for s in starts}
    assert ("38341003", "lisinopril") in by_problem  # suggested hypertension, with diabetes
    assert ("44054006", "metformin") in by_problem
    assert all(s["personalisation"] is not None and s["citations"] for s in tx["suggestions"])


async def test_suggestions_rest_only_on_what_the_token_may_read(service):
    """The hypertension suggestion rests on blood pressure Observations: a token that reads
    Conditions only gets no suggestion built from them, and one that reads both gets it; the
    AuditEvent names what was shown."""
    audit = MemoryAuditLog()
    app = build_app(
        Authenticator(TOKEN, HttpSettings(jwt_hs256_secret=SECRET)), assist_routes(service), audit=audit
    )

    def bearer(scope):
        claims = {"sub": "dr", "exp": int(time.time()) + 60, "scope": scope}
        return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}

    async with client_of(app) as client:
        none = await client.post(
            "/assist/diagnoses", json={"patient_id": "p1"}, headers=bearer("user/Observation.s")
        )
        conditions = await client.post(
            "/assist/diagnoses", json={"patient_id": "p1"}, headers=bearer("user/Condition.rs")
        )
        both = await client.post(
            "/assist/diagnoses",
            json={"patient_id": "p1"},
            headers=bearer("user/Condition.rs user/Observation.rs user/Patient.rs"),
        )
        refused = await client.post(
            "/assist/diagnoses", json={"patient_id": "p1"}, headers=bearer("user/Encounter.rs")
        )
    assert conditions.status_code == 200
    assert conditions.json()["suggestions"] == []
    assert [s["code"]["coding"][0]["code"] for s in both.json()["suggestions"]] == ["38341003"]
    assert none.status_code == 200
    assert refused.status_code == 403  # reads nothing assistance reasons over
    shown = [e for e, _ in audit.events if e["entity"][-1:] and e["outcome"] == "0"]
    cited = {ent["what"]["reference"] for e in shown for ent in e["entity"] if "what" in ent}
    assert any(ref.startswith("Observation/") for ref in cited)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"patient_id": "nobody"}, 404),
        ({"patient_id": ""}, 422),
        ({"patient": "p1"}, 422),
        ("not json", 400),
    ],
)
async def test_bad_requests(service, body, status):
    async with api(service) as client:
        if isinstance(body, str):
            response = await client.post("/assist/diagnoses", content=body, headers=AUTH)
        else:
            response = await client.post("/assist/diagnoses", json=body, headers=AUTH)
    assert response.status_code == status
    assert "nobody" not in response.text  # no identifier echoed


async def test_a_patient_without_data_gets_empty_suggestions(service):
    async with api(service) as client:
        for route in ("/assist/diagnoses", "/assist/treatments"):
            response = await client.post(route, json={"patient_id": "empty"}, headers=AUTH)
            assert response.json() == {"suggestions": []}


async def test_ask_answers_with_citations(service):
    async with api(service) as client:
        response = await client.post(
            "/assist/ask",
            json={"patient_id": "p1", "question": "Why is the creatinine rising?"},
            headers=AUTH,
        )
    body = response.json()
    assert response.status_code == 200
    assert body["sentences"][0]["text"] == "Creatinine was 1.9 mg/dL on 2026-05-01."
    assert all(s["citations"] for s in body["sentences"])
    assert body["answer"].startswith("Creatinine was 1.9 mg/dL")


async def test_a_model_failure_is_503_with_retry_after_never_an_uncited_answer(service):
    service.model = Scripted(fail=True)
    async with api(service) as client:
        response = await client.post(
            "/assist/ask",
            json={"patient_id": "p1", "question": "Why is the creatinine rising?"},
            headers=AUTH,
        )
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "answer" not in response.json()


async def test_nothing_to_answer_from_is_an_empty_answer_not_an_error(service):
    async with api(service) as client:
        response = await client.post(
            "/assist/ask", json={"patient_id": "p1", "question": "Why?"}, headers=AUTH
        )
    assert (response.status_code, response.json()["sentences"]) == (200, [])


async def test_a_slow_model_is_503(service):
    class Slow(Scripted):
        def chat(self, messages, config):
            time.sleep(1.0)
            return super().chat(messages, config)

    service.model, service.ask_timeout_s = Slow("x"), 0.2
    async with api(service) as client:
        response = await client.post(
            "/assist/ask", json={"patient_id": "p1", "question": "How is the creatinine?"}, headers=AUTH
        )
    assert response.status_code == 503


def _token(service_id):
    now = int(time.time())
    claims = {
        "iss": "https://ehr.example",
        "aud": f"{BASE}/cds-services/{service_id}",
        "iat": now,
        "exp": now + 60,
    }
    return jwt.encode(claims | {"jti": uuid.uuid4().hex}, SECRET, algorithm="HS256")


@pytest.fixture
def hooks(service):
    published = []

    async def publish(event):
        published.append(event)

    state = SqliteStateStore(":memory:")
    cds = CdsHooksService(
        state,
        CdsJwtVerifier(hs256_secret=SECRET),
        publish,
        http=httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404))),
        authorities={},
        cards_window=timedelta(hours=24),
        public_base_url=BASE,
        extra=[AssistHooks(service, s) for s in cards.HOOKS],
    )
    return client_of(
        build_app(TOKEN, cds.routes(), own_auth=("/cds-services",), audit=MemoryAuditLog())
    ), published


def _call(hook, service_id, **context):
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"patientId": "p1", "userId": "Practitioner/1", **context},
    }


async def test_discovery_lists_the_assistance_services(hooks):
    client, _ = hooks
    async with client:
        services = (await client.get("/cds-services")).json()["services"]
    assert {(s["id"], s["hook"]) for s in services} >= {
        (cards.DIAGNOSES, "patient-view"),
        (cards.TREATMENTS, "patient-view"),
        (cards.ORDER_SELECT, "order-select"),
        (cards.ORDER_SIGN, "order-sign"),
    }


async def test_patient_view_cards_and_feedback_writes_back_a_provisional_condition(hooks, service):
    client, published = hooks
    async with client:
        response = await client.post(
            f"/cds-services/{cards.DIAGNOSES}",
            json=_call("patient-view", cards.DIAGNOSES),
            headers={"Authorization": f"Bearer {_token(cards.DIAGNOSES)}"},
        )
        (card,) = response.json()["cards"]
        assert (
            card["summary"]
            == "Possible undocumented diagnosis: Hypertensive disorder, systemic arterial (disorder)"
        )
        (suggestion,) = card["suggestions"]
        condition = suggestion["actions"][0]["resource"]
        assert condition["verificationStatus"]["coding"][0]["code"] == "provisional"
        assert condition["subject"] == {"reference": "Patient/p1"}
        # the same record shows the same card (deduplicated by uuid)
        again = await client.post(
            f"/cds-services/{cards.DIAGNOSES}",
            json=_call("patient-view", cards.DIAGNOSES),
            headers={"Authorization": f"Bearer {_token(cards.DIAGNOSES)}"},
        )
        assert again.json()["cards"][0]["uuid"] == card["uuid"]
        feedback = {
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": suggestion["uuid"]}],
                    "outcomeTimestamp": "2026-06-01T10:00:00Z",
                }
            ]
        }
        done = await client.post(
            f"/cds-services/{cards.DIAGNOSES}/feedback",
            json=feedback,
            headers={"Authorization": f"Bearer {_token(cards.DIAGNOSES)}"},
        )
    assert done.status_code == 200
    (event,) = published
    assert (event.rule_id, event.outcome) == ("dx-hypertension", "accepted")
    (written,) = await accepted_conditions(service, event)
    # the Condition the card offered, deterministic id and all; write-back names our Patient
    assert written | {"subject": condition["subject"]} == condition
    assert written["subject"] == {"reference": "Patient/p"}
    rejected = ClinicianFeedback(**(event.model_dump() | {"outcome": "overridden"}))
    assert await accepted_conditions(service, rejected) == []


async def test_treatment_cards_carry_medication_request_proposals(hooks):
    client, _ = hooks
    async with client:
        response = await client.post(
            f"/cds-services/{cards.TREATMENTS}",
            json=_call("patient-view", cards.TREATMENTS),
            headers={"Authorization": f"Bearer {_token(cards.TREATMENTS)}"},
        )
    proposals = [
        a["resource"]
        for c in response.json()["cards"]
        for s in c.get("suggestions", [])
        for a in s["actions"]
    ]
    requests = [r for r in proposals if r["resourceType"] == "MedicationRequest"]
    assert requests
    assert {(r["status"], r["intent"]) for r in requests} == {("draft", "proposal")}


def _orders(*texts):
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": f"draft{n}",
                    "status": "draft",
                    "intent": "order",
                    "medicationCodeableConcept": {"text": text},
                    "subject": {"reference": "Patient/p1"},
                }
            }
            for n, text in enumerate(texts)
        ],
    }


async def test_order_sign_offers_the_better_choice(hooks, service):
    service.store.apply("p1", [med("Lisinopril 10 MG Oral Tablet", status="stopped", authored="2020-01-01")])
    client, _ = hooks
    async with client:
        response = await client.post(
            f"/cds-services/{cards.ORDER_SIGN}",
            json=_call(
                "order-sign", cards.ORDER_SIGN, draftOrders=_orders("amlodipine 5 MG Oral Tablet", "Tylenol")
            ),
            headers={"Authorization": f"Bearer {_token(cards.ORDER_SIGN)}"},
        )
        (card,) = response.json()["cards"]
        assert card["summary"].startswith("amlodipine 5 MG Oral Tablet: not the best choice")
        actions = card["suggestions"][0]["actions"]
        assert actions[0] == {
            "type": "delete",
            "description": "Remove the draft order: amlodipine 5 MG Oral Tablet",
            "resource": "MedicationRequest/draft0",
        }
        assert actions[1]["resource"]["medicationCodeableConcept"]["coding"][0]["display"] == "lisinopril"
        bad = await client.post(
            f"/cds-services/{cards.ORDER_SIGN}",
            json=_call("order-sign", cards.ORDER_SIGN, draftOrders={"resourceType": "Patient"}),
            headers={"Authorization": f"Bearer {_token(cards.ORDER_SIGN)}"},
        )
    assert bad.status_code == 400


def test_openai_client_speaks_the_chat_completions_protocol():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "choices": [
                    {"message": {"role": "assistant", "content": " Hello. "}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3},
            },
        )

    chat = OpenAIChat(
        "http://llm.test/v1",
        "smollm2",
        api_key="k",
        client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    out = chat.chat([{"role": "user", "content": "Hi"}], GenerationConfig(max_new_tokens=7))
    assert (out.text, out.generated, out.prompt_tokens) == ("Hello.", 3, 9)
    assert seen[0].url == "http://llm.test/v1/chat/completions"
    assert seen[0].read()
    assert b'"max_tokens":7' in seen[0].content.replace(b" ", b"")


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(500),
        httpx.Response(200, json={"choices": []}),
        httpx.Response(200, content=b"not json"),
    ],
)
def test_openai_client_failures_are_model_run_errors(response):
    chat = OpenAIChat(
        "http://llm.test/v1", "m", client=httpx.Client(transport=httpx.MockTransport(lambda r: response))
    )
    with pytest.raises(ModelRunError):
        chat.chat([{"role": "user", "content": "Hi"}], GenerationConfig())
