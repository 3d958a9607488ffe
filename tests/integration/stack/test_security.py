"""Every HTTP endpoint of the running deployment authenticates: the routes are read from the
live application (so a route added later is swept too), and each one is called without
credentials and with wrong ones. A patient-scoped agent token is refused outside the agent
tools, and inside them outside its patients. Every route answers each SMART scope as the rules
stated here say, and each route that touches patient data, called once, leaves exactly one
AuditEvent naming its caller, the audit topic's chains intact. One stack serves all four."""

import asyncio
import base64
import json
import re
import time

import httpx
import jwt
import pytest

from clinstream.cli import main
from clinstream.http import PUBLIC_PATHS
from inference.cds.http import CDS_HOOKS_PATH
from kernel.audit import summary, verify
from kernel.audit_kafka import events_of, read_partitions
from kernel.events import TOPICS, patient_key

pytestmark = pytest.mark.integration
SECRET = "security-sweep-secret-of-32-chars!!"
AUDIENCE = "clinstream-api"
SERVICE_ID = "clinstream-alerts"
JANE, RICHARD = patient_key("MERCY", "100001"), patient_key("MERCY", "100002")


@pytest.fixture
async def stack(start_stack):
    async with start_stack(
        http={
            "api_token": "sweep-service-token",
            "jwt_hs256_secret": SECRET,
            "jwt_audience": AUDIENCE,
        },
        milvus={"collection": "sweep"},
        cds={"jwt_secret": "cds-hooks-secret-of-at-least-32-chars"},
        notes={"generator": False},
    ) as s:
        yield s


def _jwt(secret=SECRET, **claims):
    now = int(time.time())
    return jwt.encode(
        {"sub": "someone", "aud": AUDIENCE, "iat": now, "exp": now + 300} | claims, secret, "HS256"
    )


def _endpoints(app):
    """(method, path) of every route, path parameters filled in."""
    out = []
    for route in app.routes:
        for method in sorted(set(route.methods or ()) - {"HEAD"}):
            path = route.path.replace("{service}", SERVICE_ID)  # a real service: auth is what is checked
            out.append((method, re.sub(r"\{[^}]+\}", "x1", path)))
    return out


def _wrong_credentials():
    return {
        "none": None,
        "unknown static token": "Bearer not-the-token",
        "token without Bearer": "sweep-service-token",
        "basic auth": "Basic " + base64.b64encode(b"admin:admin").decode(),
        "JWT of another key": "Bearer " + _jwt(secret="another-secret-entirely-32-chars-long"),
        "expired JWT": "Bearer " + _jwt(exp=int(time.time()) - 60),
        "JWT for another audience": "Bearer " + _jwt(aud="someone-else"),
        "unsigned JWT": "Bearer " + jwt.encode({"sub": "x", "aud": AUDIENCE}, None, algorithm="none"),
    }


async def _every_endpoint_refuses_missing_and_wrong_credentials(stack):
    endpoints = _endpoints(stack.app)
    paths = {path for _, path in endpoints}
    for expected in ("/fhir", "/dicom/studies", "/query", "/patients/x1/timeline", "/agent/tools/x1"):
        assert expected in paths  # the sweep sees every stage's routes
    assert f"{CDS_HOOKS_PATH}/{SERVICE_ID}" in paths
    assert "/notes/drafts/x1/review" in paths
    public = {("GET", p) for p in PUBLIC_PATHS} | {("GET", CDS_HOOKS_PATH)}  # CDS Hooks discovery is public
    swept = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=30) as http:
        for method, path in endpoints:
            if (method, path) in public:
                assert (await http.request(method, path)).status_code == 200
                continue
            for what, header in _wrong_credentials().items():
                headers = {"Authorization": header} if header else {}
                response = await http.request(method, path, headers=headers, content=b"{}")
                assert response.status_code == 401, (method, path, what, response.status_code)
                swept += 1
            # The service's own token gets past authentication (what the handler says next
            # depends on the body), except on CDS Hooks, which takes the EHR's JWT only.
            ok = await http.request(
                method, path, headers={"Authorization": "Bearer sweep-service-token"}, content=b"{}"
            )
            if path.startswith(CDS_HOOKS_PATH):
                assert ok.status_code == 401, (method, path)
            else:
                assert ok.status_code not in (401, 403), (method, path, ok.status_code)
    assert swept >= 8 * 20


async def _patient_scoped_tokens_stay_in_their_scope(stack):
    jane = {"Authorization": "Bearer " + _jwt(patients=[JANE], scope="patient/*.read")}
    base = f"http://127.0.0.1:{stack.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        # Outside the agent tools an agent's token could name any patient: refused everywhere.
        for method, path, body in [
            ("POST", "/query", {"patient_id": JANE, "question": "potassium"}),
            ("GET", f"/patients/{RICHARD}/timeline", None),
            ("GET", f"/cds/alerts/{RICHARD}", None),
            ("GET", "/notes/drafts", None),
            ("POST", "/fhir/Observation", {"resourceType": "Observation"}),
            ("GET", "/metrics", None),
        ]:
            response = await http.request(method, path, headers=jane, json=body)
            assert response.status_code == 403, (method, path, response.status_code)
        # Inside them, another patient is refused before any data is read.
        refused = await http.post("/agent/tools/patient_timeline", headers=jane, json={"patient_id": RICHARD})
        assert refused.status_code == 403
        allowed = await http.post("/agent/tools/patient_timeline", headers=jane, json={"patient_id": JANE})
        assert allowed.status_code == 200


# What each route needs, written here from the issue's rules (not read from the routes' own
# Needs): "public", "token" (any valid token), ("read", types: any one of them), ("write",
# types: all of them; () any write), "audit", "agent" (the tools check patient scopes
# themselves), "cds" (the EHR's JWT only).
INDEXED = {"Observation", "Condition", "DocumentReference", "DiagnosticReport", "Encounter", "Patient"}
ASSIST = {"Condition", "Observation", "MedicationRequest", "AllergyIntolerance", "DiagnosticReport"}
EXPECTED = [
    ("GET", r"/health|/fhir/metadata|/cds-services", "public"),
    ("GET", r"/metrics|/openapi\.json|/index/stats|/agent/tools|/agent/openapi\.json", "token"),
    ("POST", r"/knowledge/query", "token"),
    ("POST", r"/query|/context", ("read", INDEXED)),
    ("GET", r"/patients/x1/timeline", ("read", INDEXED)),
    ("POST", r"/assist/(diagnoses|treatments|ask)", ("read", ASSIST)),
    ("GET", r"/cds/alerts/x1", ("read", {"DetectedIssue"})),
    ("GET", r"/notes/drafts(/x1)?", ("read", {"DocumentReference"})),
    ("POST", r"/notes/drafts(/x1/review)?", ("write", {"DocumentReference"})),
    ("POST", r"/fhir|/fhir/x1|/fhir/subscription-notification", ("write", set())),
    ("PUT", r"/fhir/x1/x1", ("write", set())),
    ("POST", r"/dicom/studies", ("write", {"Patient", "ImagingStudy"})),
    ("GET", r"/audit/events", "audit"),
    ("GET", r"/terminology/(unmapped|mappings)", ("read", {"ConceptMap"})),
    ("POST", r"/terminology/mappings", ("write", {"ConceptMap"})),
    ("POST", r"/agent/tools/x1", "agent"),
    ("POST", rf"{CDS_HOOKS_PATH}/{SERVICE_ID}(/feedback)?", "cds"),
]
ALL = None
# scope claim -> (types read, types written); ALL: every clinical type (never AuditEvent).
TOKENS = {
    "": (set(), set()),
    "user/*.rs": (ALL, set()),
    "user/Observation.rs": ({"Observation"}, set()),
    "user/DetectedIssue.rs user/DocumentReference.rs": ({"DetectedIssue", "DocumentReference"}, set()),
    "user/DocumentReference.cru": ({"DocumentReference"}, {"DocumentReference"}),
    "system/*.cruds": (ALL, ALL),
    "system/AuditEvent.rs": ({"AuditEvent"}, set()),
}


def _expected(method, path):
    for m, pattern, need in EXPECTED:
        if m == method and re.fullmatch(pattern, path):
            return need
    raise AssertionError(f"{method} {path} is a route this test does not know: say what it needs")


def _allowed(need, scope):
    reads, writes = TOKENS[scope]
    if need in ("public", "token", "agent"):
        return True
    if need == "audit":
        return reads is not ALL and "AuditEvent" in reads  # "*" never covers the audit log
    kind, types = need
    granted = reads if kind == "read" else writes
    if granted is ALL:
        return True
    if kind == "read":
        return bool(granted & types)
    return bool(granted) and types <= granted


async def test_the_live_api_authenticates_scopes_and_audits_every_route(stack, monkeypatch, capsys):
    """One stack for the four checks (starting a stack is the slow part)."""
    await _every_endpoint_refuses_missing_and_wrong_credentials(stack)
    await _patient_scoped_tokens_stay_in_their_scope(stack)
    await _every_route_answers_every_scope_as_the_rules_say(stack)
    await _each_phi_route_called_once_gives_exactly_one_audit_event_naming_the_caller(
        stack, monkeypatch, capsys
    )


async def _every_route_answers_every_scope_as_the_rules_say(stack):
    endpoints = _endpoints(stack.app)
    checked = 0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=60) as http:
        for method, path in endpoints:
            need = _expected(method, path)
            for scope in TOKENS:
                claims = {"scope": scope} if scope else {}
                headers = {"Authorization": "Bearer " + _jwt(sub=f"sweep-{checked}", **claims)}
                response = await http.request(method, path, headers=headers, content=b"{}")
                status = response.status_code
                checked += 1
                if need == "cds":
                    assert status == 401, (method, path, scope, status)
                elif _allowed(need, scope):
                    assert status not in (401, 403), (method, path, scope, status, response.text)
                else:
                    assert status == 403, (method, path, scope, status)
    assert checked >= 29 * len(TOKENS)  # every route, every token


PATIENT_BODIES = {
    ("POST", "/query"): {"patient_id": "MERCY|100001", "question": "potassium"},
    ("POST", "/context"): {"patient_id": "MERCY|100001", "question": "potassium"},
    ("GET", f"/patients/{JANE}/timeline"): None,
    ("POST", "/assist/diagnoses"): {"patient_id": JANE},
    ("POST", "/assist/treatments"): {"patient_id": JANE},
    ("POST", "/assist/ask"): {"patient_id": JANE, "question": "what is her potassium?"},
    ("GET", f"/cds/alerts/{JANE}"): None,
    ("POST", "/notes/drafts"): {"patient_id": JANE, "type": "progress-note"},
    ("GET", f"/audit/events?patient={JANE}"): None,
    ("PUT", f"/fhir/Patient/{JANE}"): {"resourceType": "Patient", "id": JANE, "gender": "female"},
}


async def _each_phi_route_called_once_gives_exactly_one_audit_event_naming_the_caller(
    stack, monkeypatch, capsys
):
    """Every route that reads or writes patient data, called once by its own principal: the
    audit topic then holds exactly one AuditEvent by that principal, naming the patient the
    call named; the hash chains of the whole topic hold."""
    concrete = {
        "/patients/x1/timeline": f"/patients/{JANE}/timeline",
        "/cds/alerts/x1": f"/cds/alerts/{JANE}",
        "/fhir/x1/x1": f"/fhir/Patient/{JANE}",
        "/audit/events": f"/audit/events?patient={JANE}",
    }
    calls = {}
    for method, path in _endpoints(stack.app):
        if _expected(method, path) in ("public", "token", "agent", "cds"):
            continue
        path = concrete.get(path, path)
        calls[(method, path)] = PATIENT_BODIES.get((method, path))
    principals = {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=120) as http:
        for n, ((method, path), body) in enumerate(sorted(calls.items())):
            sub = f"audited-{n}"
            headers = {
                "Authorization": "Bearer " + _jwt(sub=sub, scope="system/*.cruds system/AuditEvent.rs")
            }
            kwargs = {"json": body} if body is not None else {"content": b"{}"}
            response = await http.request(method, path, headers=headers, **kwargs)
            assert response.status_code not in (401, 403, 500, 503), (method, path, response.status_code)
            principals[f"jwt:{sub}"] = (method, path)
    assert len(principals) >= 15
    records = await read_partitions(stack.bootstrap, stack.topics.audit)
    events = [summary(e) for e in events_of(records)]
    for principal, (method, path) in principals.items():
        mine = [e for e in events if e["principal"] == principal]
        assert len(mine) == 1, (method, path, mine)
        if (method, path) in PATIENT_BODIES:
            assert mine[0]["patient"] == JANE, (method, path, mine[0])
    found = verify((p, o, v) for p, o, _, v in records)
    assert found.events == len(records) >= len(principals)
    assert found.breaks == []

    # `clinstream audit` prints the same trail and finds the chains intact.
    monkeypatch.setenv("CLINSTREAM_KAFKA__BOOTSTRAP", stack.bootstrap)
    prefix = stack.topics.audit.removesuffix(TOPICS.audit)
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["audit", "--patient", JANE, "--verify", "--topic-prefix", prefix])
    out, err = capsys.readouterr()
    assert code == 0
    printed = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert {e["principal"] for e in printed} >= {
        p for p, (method, path) in principals.items() if (method, path) in PATIENT_BODIES
    }
    assert "intact" in err
