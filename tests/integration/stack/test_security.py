"""Every HTTP endpoint of the running deployment authenticates: the routes are read from the
live application (so a route added later is swept too), and each one is called without
credentials and with wrong ones. A patient-scoped agent token is refused outside the agent
tools, and inside them outside its patients."""

import base64
import re
import time

import httpx
import jwt
import pytest

from clinstream.http import PUBLIC_PATHS
from inference.cds.http import CDS_HOOKS_PATH
from kernel.events import patient_key

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


async def test_every_endpoint_refuses_missing_and_wrong_credentials(stack):
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


async def test_patient_scoped_tokens_stay_in_their_scope(stack):
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
