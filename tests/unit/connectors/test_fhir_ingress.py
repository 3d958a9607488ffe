"""FHIR ingress over HTTP (Starlette test client, in-memory sink): validation, Bundles, auth, corpus."""

import json
import time

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from clinstream.http import build_app
from connectors.fhir_server import FhirIngress
from connectors.security import Authenticator
from kernel.audit_kafka import MemoryAuditLog
from kernel.events import DeadLetter, Envelope, FhirInbound, Topics
from kernel.settings import HttpSettings
from tests.conftest import corpora_dir
from tests.fakes import MemorySink

TOPICS = Topics()
TOKEN = "fhir-test-token"
SECRET = "hs256-test-secret-with-enough-length-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": "urn:mrn", "value": "MRN-QZ7123"}],
    "gender": "female",
    "birthDate": "1980-02-03",
}
OBS = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
    "subject": {"reference": "Patient/p1"},
    "valueQuantity": {"value": 4.1, "unit": "mmol/L"},
}


@pytest.fixture
def env():
    sink = MemorySink()
    settings = HttpSettings(jwt_hs256_secret=SECRET, jwt_audience="clinstream", max_body_bytes=200_000)
    app = build_app(
        Authenticator(TOKEN, settings), FhirIngress(sink, TOPICS, settings).routes(), audit=MemoryAuditLog()
    )
    return TestClient(app), sink


def _outcome(response):
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert response.headers["content-type"].startswith("application/fhir+json")
    return body["issue"]


def test_capability_statement_is_public(env):
    client, _ = env
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer "])
def test_unauthenticated_calls_get_401_operation_outcome(env, header):
    client, sink = env
    headers = {"Content-Type": "application/fhir+json"} | ({"Authorization": header} if header else {})
    response = client.put("/fhir/Patient/p1", json=PATIENT, headers=headers)
    assert response.status_code == 401
    assert _outcome(response)[0]["code"] == "login"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert sink.records == []


def test_put_keeps_the_ehr_id_and_publishes_after_the_write(env):
    client, sink = env
    response = client.put("/fhir/Patient/p1", json=PATIENT, headers=AUTH)
    assert response.status_code == 200
    [(topic, value, _key, headers)] = sink.records
    assert topic == TOPICS.inbound_fhir
    record = FhirInbound.model_validate_json(value)
    assert (record.interaction, record.patient_ref, record.resources[0]["id"]) == (
        "update",
        "Patient/p1",
        "p1",
    )
    envelope = Envelope.from_headers(headers)
    assert envelope.source_system == "fhir:api-token"
    assert b"QZ7123" not in b"".join(headers.values())  # no MRN in headers (no hex digit string)


def test_post_assigns_a_deterministic_id(env):
    client, sink = env
    first = client.post("/fhir/Observation", json=OBS, headers=AUTH)
    second = client.post("/fhir/Observation", json=OBS, headers=AUTH)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert first.headers["location"].endswith(f"/fhir/Observation/{first.json()['id']}")
    keys = {r[2] for r in sink.on(TOPICS.inbound_fhir)}
    assert len(keys) == 1  # keyed by the patient reference


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/fhir/Patient/p1", b"{not json", 400, "structure"),
        ("/fhir/Patient/p1", b"[1, 2]", 400, "structure"),
        ("/fhir/Patient/p2", json.dumps(PATIENT).encode(), 400, "invalid"),  # id differs from URL
        ("/fhir/Observation/p1", json.dumps(PATIENT).encode(), 400, "invalid"),  # type differs from URL
        ("/fhir/Patient/p1", json.dumps({**PATIENT, "gender": "f"}).encode(), 400, "value"),
        ("/fhir/Patient/p1", json.dumps({**PATIENT, "unknownElement": 1}).encode(), 400, "structure"),
        ("/fhir/Patient/p1", json.dumps({**PATIENT, "birthDate": "03/02/1980"}).encode(), 400, "value"),
    ],
)
def test_bad_input_gets_operation_outcome_and_dead_letter(env, path, body, status, code):
    client, sink = env
    response = client.put(path, content=body, headers=AUTH)
    assert response.status_code == status
    issues = _outcome(response)
    assert issues[0]["code"] == code
    assert "03/02/1980" not in response.text  # values are not echoed
    [dead] = sink.on(TOPICS.deadletter)
    assert DeadLetter.model_validate_json(dead[1]).payload == body
    assert sink.on(TOPICS.inbound_fhir) == []


def test_reference_to_unknown_type_is_refused(env):
    client, _ = env
    response = client.post(
        "/fhir/Observation", json={**OBS, "subject": {"reference": "Patientt/p1"}}, headers=AUTH
    )
    assert response.status_code == 400
    assert _outcome(response)[0]["expression"] == ["Observation.subject.reference"]


def test_xml_and_oversized_bodies(env):
    client, _ = env
    xml = client.put(
        "/fhir/Patient/p1", content=b"<Patient/>", headers=AUTH | {"Content-Type": "application/fhir+xml"}
    )
    assert xml.status_code == 415
    big = client.put("/fhir/Patient/p1", content=b" " * 300_000, headers=AUTH)
    assert big.status_code == 413


def _bundle(kind, entries):
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def _entry(resource, method="POST", full_url=None):
    entry = {"resource": resource, "request": {"method": method, "url": resource["resourceType"]}}
    return entry | ({"fullUrl": full_url} if full_url else {})


def test_transaction_is_all_or_nothing(env):
    client, sink = env
    good = _bundle("transaction", [_entry(PATIENT, "PUT"), _entry(OBS)])
    bad = _bundle("transaction", [_entry(PATIENT, "PUT"), _entry({**OBS, "status": "done"})])
    ok = client.post("/fhir", json=good, headers=AUTH)
    assert ok.status_code == 200
    assert ok.json()["type"] == "transaction-response"
    [record] = sink.on(TOPICS.inbound_fhir)
    assert [r["resourceType"] for r in FhirInbound.model_validate_json(record[1]).resources] == [
        "Patient",
        "Observation",
    ]
    refused = client.post("/fhir", json=bad, headers=AUTH)
    assert refused.status_code == 400
    assert _outcome(refused)[0]["expression"] == ["Bundle.entry[1].resource.Observation.status"]
    assert len(sink.on(TOPICS.inbound_fhir)) == 1


def test_transaction_with_unresolvable_uuid_reference_is_refused(env):
    client, _ = env
    obs = {**OBS, "subject": {"reference": "urn:uuid:7f0f6d0e-0000-4000-8000-000000000001"}}
    response = client.post("/fhir", json=_bundle("transaction", [_entry(obs)]), headers=AUTH)
    assert response.status_code == 400
    assert _outcome(response)[0]["code"] == "not-found"


@pytest.mark.parametrize(
    "odd",
    [{"request": True}, {"request": ["POST"]}, {"fullUrl": ["urn:uuid:x"]}, {"fullUrl": {"a": 1}}],
)
def test_entries_with_odd_request_or_full_url_get_an_answer_not_a_500(env, odd):
    """Found by the fuzzer: a request that is no object, a fullUrl that is no string."""
    client, sink = env
    obs = {**OBS, "subject": {"reference": "urn:uuid:7f0f6d0e-0000-4000-8000-000000000001"}}
    response = client.post("/fhir", json=_bundle("transaction", [{**_entry(obs), **odd}]), headers=AUTH)
    assert response.status_code == 400
    assert _outcome(response)[0]["code"] == "not-found"
    assert [r[0] for r in sink.records] == [TOPICS.deadletter]


def test_batch_answers_per_entry(env):
    client, sink = env
    batch = _bundle(
        "batch",
        [
            _entry(PATIENT, "PUT"),
            _entry({**OBS, "status": "done"}),
            _entry(OBS),
            {"request": {"method": "DELETE", "url": "Patient/p9"}},
        ],
    )
    response = client.post("/fhir", json=batch, headers=AUTH)
    assert response.status_code == 200
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["200 OK", "400 Bad Request", "200 OK", "400 Bad Request"]
    assert len(sink.on(TOPICS.inbound_fhir)) == 2
    assert len(sink.on(TOPICS.deadletter)) == 2


def _status(kind, fmt="R4B"):
    if fmt == "R4B":
        return {
            "resourceType": "SubscriptionStatus",
            "status": "active",
            "type": kind,
            "subscription": {"reference": "Subscription/s1"},
            "topic": "http://example.org/topic/lab",
        }
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subscription", "valueReference": {"reference": "Subscription/s1"}},
            {"name": "type", "valueCode": kind},
        ],
    }


@pytest.mark.parametrize("fmt", ["R4B", "R4-backport"])
def test_subscription_notifications(env, fmt):
    client, sink = env
    url = "/fhir/subscription-notification"
    handshake = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [{"resource": _status("handshake", fmt)}],
    }
    assert client.post(url, json=handshake, headers=AUTH).status_code == 200
    assert sink.on(TOPICS.inbound_fhir) == []
    event = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {"resource": _status("event-notification", fmt)},
            {"fullUrl": "http://ehr/fhir/Observation/o1", "resource": {**OBS, "id": "o1"}},
            {"fullUrl": "http://ehr/fhir/Observation/o2"},  # id-only
        ],
    }
    assert client.post(url, json=event, headers=AUTH).status_code == 200
    [record] = sink.on(TOPICS.inbound_fhir)
    inbound = FhirInbound.model_validate_json(record[1])
    assert inbound.interaction == "notification"
    assert [r["id"] for r in inbound.resources] == ["o1"]
    assert inbound.references == ["http://ehr/fhir/Observation/o2"]
    bad = client.post(url, json={"resourceType": "Bundle", "type": "history", "entry": []}, headers=AUTH)
    assert bad.status_code == 400


def test_broker_down_gives_503_with_retry_after(env):
    client, sink = env
    sink.fail = True
    response = client.put("/fhir/Patient/p1", json=PATIENT, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert _outcome(response)[0]["code"] == "transient"


def test_input_larger_than_the_broker_takes_gets_413_and_a_dead_letter_not_500():
    sink = MemorySink(max_bytes=50_000)
    settings = HttpSettings(jwt_hs256_secret=SECRET, jwt_audience="clinstream", max_body_bytes=2_000_000)
    client = TestClient(
        build_app(
            Authenticator(TOKEN, settings),
            FhirIngress(sink, TOPICS, settings).routes(),
            audit=MemoryAuditLog(),
        )
    )
    big = {**PATIENT, "text": {"status": "generated", "div": f"<div>{'x' * 60_000}</div>"}}
    response = client.put("/fhir/Patient/p1", json=big, headers=AUTH)
    assert response.status_code == 413
    [issue] = _outcome(response)
    assert issue["code"] == "too-costly"
    assert "larger than the broker accepts" in issue["diagnostics"]
    [(topic, value, _, _)] = sink.records
    letter = DeadLetter.model_validate_json(value)
    assert topic == TOPICS.deadletter
    assert letter.payload == b""


def _jwt(**claims):
    base = {"sub": "ehr-interface", "aud": "clinstream", "exp": int(time.time()) + 60}
    return jwt.encode(base | claims, SECRET, algorithm="HS256")


def test_jwt_authentication(env):
    client, sink = env
    headers = {"Content-Type": "application/fhir+json"}
    token = _jwt(scope="system/Patient.cu")
    ok = client.put("/fhir/Patient/p1", json=PATIENT, headers=headers | {"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert Envelope.from_headers(sink.records[-1][3]).source_system == "fhir:jwt:ehr-interface"
    for bad in (
        _jwt(exp=int(time.time()) - 10),
        _jwt(aud="someone-else"),
        jwt.encode(
            {"sub": "x", "aud": "clinstream", "exp": int(time.time()) + 60},
            "wrong-secret-1234567890123456789",
            algorithm="HS256",
        ),
    ):
        response = client.put(
            "/fhir/Patient/p1", json=PATIENT, headers=headers | {"Authorization": f"Bearer {bad}"}
        )
        assert response.status_code == 401


def test_a_write_needs_a_write_scope_for_the_type_written(env):
    """No scope: 403 at the route. A scope for another type: 403 OperationOutcome, nothing
    published and no dead letter (a refusal, not bad input)."""
    client, sink = env
    headers = {"Content-Type": "application/fhir+json"}
    before = len(sink.records)
    for scope, status in (
        (None, 403),
        ("user/*.rs", 403),
        ("system/Observation.cu", 403),
        ("system/Patient.c", 200),
        ("system/*.cruds", 200),
    ):
        token = {"Authorization": "Bearer " + _jwt(**({"scope": scope} if scope else {}))}
        r = client.put("/fhir/Patient/p1", json=PATIENT, headers=headers | token)
        assert r.status_code == status, scope
        if status == 403:  # FHIR clients get an OperationOutcome, whichever check refused
            assert r.json()["resourceType"] == "OperationOutcome"
    assert len(sink.records) == before + 2
    assert all(topic != TOPICS.deadletter for topic, *_ in sink.records[before:])


# The corpus's deliberately invalid inputs (see corpora/SOURCES.md) that must be refused.
MUST_REFUSE = {
    "ObservationWithInvalidStatus.json",
    "ObservationWithNoCode.json",
    "InvalidObservation.json",
    "PatientMissingResourceType.json",
    "PatientWithUnknownElements.json",
    "MoneyWithWrongDecimal.json",
    "Bundle-InvalidBundleType.json",
    "Bundle-TypeMissing.json",
    "Bundle-TransactionWithInvalidResourceType.json",
    "Bundle-TransactionWithInvalidBundleEntry.json",
}


STORED_BUNDLE_TYPES = {
    "collection",
    "searchset",
    "document",
    "message",
    "history",
    "batch-response",
    "transaction-response",
}


def _route(data):
    """Where a client would send this file: Bundles to process to /fhir, anything else as a resource."""
    if not isinstance(data, dict):
        return "POST", "/fhir"
    rtype = data.get("resourceType")
    if rtype == "Bundle" and data.get("type") not in STORED_BUNDLE_TYPES:
        return "POST", "/fhir"
    if rtype and data.get("id"):
        return "PUT", f"/fhir/{rtype}/{data['id']}"
    return "POST", f"/fhir/{rtype or 'Patient'}"


def test_fhir_corpus_is_accepted_or_refused_with_an_outcome(env):
    _, sink = env
    big = HttpSettings(max_body_bytes=8 * 1024 * 1024)
    app = build_app(
        Authenticator(TOKEN, big), FhirIngress(sink, TOPICS, big).routes(), audit=MemoryAuditLog()
    )
    client = TestClient(app)
    files = sorted(p for p in (corpora_dir() / "fhir").rglob("*.json") if "smart-synthea" not in str(p))
    files += sorted((corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json"))[:6]
    outcomes = {}
    for path in files:
        raw = path.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except ValueError:
            data = None
        method, url = _route(data)
        response = client.request(method, url, content=raw, headers=AUTH)
        assert response.status_code < 500, path.name
        if response.status_code >= 400:
            _outcome(response)
        outcomes[path.name] = response.status_code
    for name in MUST_REFUSE:
        assert outcomes[name] >= 400, name
    accepted = [n for n, s in outcomes.items() if s < 300]
    assert len(accepted) >= 200  # of 323; refusals are listed in the README
    assert all(outcomes[p.name] < 300 for p in files if "smart-synthea" in str(p))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(
            [
                "resourceType",
                "id",
                "status",
                "code",
                "subject",
                "entry",
                "type",
                "valueQuantity",
                "gender",
                "birthDate",
                "meta",
            ]
        ),
        json_values,
        max_size=6,
    ).map(lambda d: {"resourceType": "Observation", **d}),
    path=st.sampled_from(["/fhir/Observation", "/fhir"]),
)
def test_arbitrary_json_gets_4xx_or_2xx_never_5xx(env, body, path):
    client, _ = env
    response = client.post(path, content=json.dumps(body).encode(), headers=AUTH)
    assert response.status_code < 500
    if response.status_code >= 400:
        _outcome(response)


def test_a_backfill_transaction_is_marked_as_such_and_a_live_one_is_not(env):
    client, sink = env
    bundle = _bundle("transaction", [_entry(PATIENT, "PUT"), _entry(OBS)])
    assert client.post("/fhir", json=bundle, headers=AUTH).status_code == 200
    history = client.post("/fhir", json=bundle, headers={**AUTH, "X-Clinstream-Lane": "Backfill"})
    assert history.status_code == 200
    lanes = [Envelope.from_headers(headers).lane for _, _, _, headers in sink.on(TOPICS.inbound_fhir)]
    assert lanes == ["live", "backfill"]


def test_an_unknown_lane_is_refused_with_an_outcome_and_stores_nothing(env):
    client, sink = env
    bundle = _bundle("transaction", [_entry(PATIENT, "PUT"), _entry(OBS)])
    response = client.post("/fhir", json=bundle, headers={**AUTH, "X-Clinstream-Lane": "urgent"})
    assert response.status_code == 400
    assert "X-Clinstream-Lane" in _outcome(response)[0]["diagnostics"]
    assert sink.on(TOPICS.inbound_fhir) == []
    assert len(sink.on(TOPICS.deadletter)) == 1


class Late:
    """A `LivePressure` whose live records are late."""

    def busy(self):
        return True


def test_history_is_told_to_wait_while_live_records_are_late_and_live_input_is_not():
    sink = MemorySink()
    settings = HttpSettings(jwt_hs256_secret=SECRET, jwt_audience="clinstream", max_body_bytes=200_000)
    ingress = FhirIngress(sink, TOPICS, settings, pressure=Late())
    client = TestClient(build_app(Authenticator(TOKEN, settings), ingress.routes(), audit=MemoryAuditLog()))
    bundle = _bundle("transaction", [_entry(PATIENT, "PUT"), _entry(OBS)])
    held = client.post("/fhir", json=bundle, headers={**AUTH, "X-Clinstream-Lane": "backfill"})
    assert held.status_code == 429
    assert held.headers["retry-after"] == "1"
    assert _outcome(held)[0]["code"] == "throttled"
    assert sink.records == []  # neither stored nor dead-lettered: it comes again
    assert client.post("/fhir", json=bundle, headers=AUTH).status_code == 200
