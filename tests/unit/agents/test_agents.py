"""Agent tools: scope checks, AuditEvents, the OpenAPI document and the MCP server, over a
backend that records what it was asked (the real backend is in the integration test)."""

import time

import httpx
import jwt
import pytest
from mcp import Client

from agents.errors import ToolError
from agents.http import agent_routes
from agents.mcp_server import build_server
from agents.tools import TOOLS, openapi, scope_of
from clinstream.http import build_app
from connectors.security import Authenticator
from kernel.audit_kafka import MemoryAuditLog
from kernel.events import patient_key
from kernel.fhir_models import model_class
from kernel.settings import HttpSettings

SECRET = "agent-test-secret-of-32-characters!!"
ALICE = patient_key("MERCY", "1001")
BOB = patient_key("MERCY", "2002")


def token(patients, scope="patient/*.read", sub="agent-1"):
    claims = {"sub": sub, "exp": int(time.time()) + 300, "scope": scope, "patients": patients}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Backend:
    def __init__(self):
        self.calls = []

    async def call(self, tool, args, patient):
        self.calls.append((tool, patient))
        if tool == "draft_note":
            return {"draft": {"id": "d1", "status": "preliminary"}}
        if tool == "active_alerts" and patient == "missing":
            raise ToolError(404, "no such patient")
        return {
            "results": [{"resource_id": "Observation/o1", "resource_type": "Observation", "text": "K 6.2"}]
        }


@pytest.fixture
def world():
    backend, audits = Backend(), []

    async def audit(event, patient):
        audits.append((event, patient))

    app = build_app(
        Authenticator("service-token", HttpSettings(jwt_hs256_secret=SECRET)),
        agent_routes(backend, audit),
        audit=MemoryAuditLog(),
    )
    return app, backend, audits


async def post(app, name, body, bearer):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.post(f"/agent/tools/{name}", json=body, headers=headers)


async def test_in_scope_call_answers_and_is_audited(world):
    app, backend, audits = world
    r = await post(
        app,
        "search_patient_record",
        {"patient_id": "MERCY|1001", "question": "potassium"},
        token(["MERCY|1001"]),
    )
    assert r.status_code == 200
    assert r.json()["results"][0]["resource_id"] == "Observation/o1"
    assert backend.calls == [("search_patient_record", ALICE)]
    [(event, key)] = audits
    assert key == ALICE
    model_class("AuditEvent").model_validate(event)
    assert event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["value"] == "jwt:agent-1"
    refs = [e["what"]["reference"] for e in event["entity"] if "what" in e]
    assert refs == [f"Patient/{ALICE}", "Observation/o1"]


@pytest.mark.parametrize(
    ("bearer", "tool", "body", "status"),
    [
        (None, "patient_timeline", {"patient_id": ALICE}, 401),
        ("wrong", "patient_timeline", {"patient_id": ALICE}, 401),
        ("service-token", "patient_timeline", {"patient_id": ALICE}, 403),  # not an agent token
        (("jwt", [ALICE], "patient/*.read"), "patient_timeline", {"patient_id": BOB}, 403),  # another patient
        (
            ("jwt", [ALICE], "patient/*.read"),
            "patient_timeline",
            {"patient_id": "MERCY|2002"},
            403,
        ),  # the same, by MRN
        (("jwt", [ALICE], "launch"), "patient_timeline", {"patient_id": ALICE}, 403),  # no read grant
        (
            ("jwt", [ALICE], "patient/*.read"),
            "draft_note",
            {"patient_id": ALICE, "type": "progress-note"},
            403,
        ),  # read-only
        (("jwt", [ALICE], "patient/*.read"), "patient_timeline", {"patient_id": ALICE, "limit": 5000}, 422),
        (("jwt", [ALICE], "patient/*.read"), "patient_timeline", {"patient": ALICE}, 422),
        (("jwt", [ALICE], "patient/*.read"), "delete_everything", {}, 404),
    ],
)
async def test_refusals_never_reach_the_backend(world, bearer, tool, body, status):
    app, backend, audits = world
    if isinstance(bearer, tuple):  # minted here: a token minted at collection may expire before the run
        bearer = token(bearer[1], scope=bearer[2])
    r = await post(app, tool, body, bearer)
    assert r.status_code == status
    assert backend.calls == []
    assert "results" not in r.json()
    if status == 403:
        [(event, _)] = audits
        assert event["outcome"] == "4"
        model_class("AuditEvent").model_validate(event)


async def test_write_scope_drafts_and_knowledge_needs_no_patient(world):
    app, backend, audits = world
    writer = token([ALICE], scope="patient/*.read patient/DocumentReference.write")
    r = await post(app, "draft_note", {"patient_id": ALICE, "type": "progress-note"}, writer)
    assert r.status_code == 200
    assert audits[-1][0]["action"] == "C"
    assert "DocumentReference/d1" in [e.get("what", {}).get("reference") for e in audits[-1][0]["entity"]]
    r = await post(app, "search_knowledge", {"question": "sepsis bundle"}, token([BOB]))
    assert r.status_code == 200
    assert backend.calls[-1] == ("search_knowledge", None)


async def test_backend_refusal_is_passed_on_and_audited(world):
    app, _, audits = world
    r = await post(app, "active_alerts", {"patient_id": "missing"}, token(["missing"]))
    assert r.status_code == 404
    assert audits[-1][0]["outcome"] == "8"


async def test_no_audit_no_data():
    backend = Backend()

    async def broken(event, patient):
        raise OSError("broker down")

    app = build_app(
        Authenticator("s", HttpSettings(jwt_hs256_secret=SECRET)),
        agent_routes(backend, broken),
        audit=MemoryAuditLog(),
    )
    r = await post(app, "patient_timeline", {"patient_id": ALICE}, token([ALICE]))
    assert r.status_code == 503
    assert "results" not in r.json()


def test_scope_claims():
    assert scope_of({"patient": "MERCY|1001", "scope": "patient/*.rs"}).patients == {ALICE}
    assert scope_of({"patients": [ALICE, BOB], "scope": "patient/*.read"}).read
    assert not scope_of({"patients": [ALICE], "scope": "patient/*.read"}).write
    assert scope_of({}).patients == frozenset()


def test_openapi_lists_every_tool_with_its_schema():
    doc = openapi()
    assert set(doc["paths"]) == {f"/agent/tools/{name}" for name in TOOLS}
    schema = doc["paths"]["/agent/tools/draft_note"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert set(schema["required"]) == {"patient_id", "type"}
    assert schema["properties"]["type"]["enum"] == [
        "discharge-summary",
        "progress-note",
        "lab-interpretation",
    ]


async def test_mcp_server_lists_tools_and_forwards_calls_with_the_agents_token(world):
    app, backend, _ = world
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://t", headers={"Authorization": f"Bearer {token([ALICE])}"}
    ) as http:
        async with Client(build_server(http)) as client:
            listed = await client.list_tools()
            assert {t.name for t in listed.tools} == set(TOOLS)
            ok = await client.call_tool("patient_timeline", {"patient_id": ALICE})
            assert not ok.is_error
            assert ok.structured_content["results"][0]["resource_id"] == "Observation/o1"
            refused = await client.call_tool("patient_timeline", {"patient_id": BOB})
            assert refused.is_error
            assert "outside" in refused.content[0].text
    assert backend.calls == [("patient_timeline", ALICE)]


async def test_assistance_tools_are_scoped_and_audited_with_their_evidence(world):
    app, backend, audits = world

    async def call(tool, args, patient):
        backend.calls.append((tool, patient))
        if tool == "ask_about_patient":
            sentence = {
                "text": "Creatinine 2.2 mg/dL.",
                "citations": ["Observation/o9", "kb:kdigo-aki.md#Definition"],
            }
            return {"answer": {"answer": sentence["text"], "sentences": [sentence], "sources": []}}
        return {"results": [{"id": "s1", "evidence": [{"resource_id": "Observation/o7", "text": "BP"}]}]}

    backend.call = call
    for tool, body in (
        ("suggest_diagnoses", {"patient_id": ALICE}),
        ("suggest_treatments", {"patient_id": ALICE}),
        ("ask_about_patient", {"patient_id": ALICE, "question": "Why is the creatinine rising?"}),
    ):
        assert (await post(app, tool, body, token([BOB]))).status_code == 403  # another patient
        r = await post(app, tool, body, token([ALICE]))
        assert r.status_code == 200
        disclosed = [e.get("what", {}).get("reference") for e in audits[-1][0]["entity"]]
        assert ("Observation/o9" if tool == "ask_about_patient" else "Observation/o7") in disclosed
        assert not any(str(d).startswith("kb:") for d in disclosed)
    assert [c for c in backend.calls] == [
        ("suggest_diagnoses", ALICE),
        ("suggest_treatments", ALICE),
        ("ask_about_patient", ALICE),
    ]


async def test_the_api_backend_asks_the_assistance_routes():
    from agents.api_client import ApiBackend
    from agents.tools import AskArgs, AssistArgs

    seen = []

    def handler(request):
        seen.append((request.url.path, request.read()))
        if request.url.path == "/assist/ask":
            return httpx.Response(200, json={"answer": "", "sentences": [], "sources": []})
        return httpx.Response(200, json={"suggestions": [{"id": "s1"}]})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url="http://api")
    backend = ApiBackend(client)
    assert await backend.call("suggest_diagnoses", AssistArgs(patient_id=ALICE), ALICE) == {
        "results": [{"id": "s1"}]
    }
    assert (await backend.call("suggest_treatments", AssistArgs(patient_id=ALICE), ALICE))["results"]
    answer = await backend.call("ask_about_patient", AskArgs(patient_id=ALICE, question="How is she?"), ALICE)
    assert answer == {"answer": {"answer": "", "sentences": [], "sources": []}}
    assert [p for p, _ in seen] == ["/assist/diagnoses", "/assist/treatments", "/assist/ask"]
