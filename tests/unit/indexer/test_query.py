import json
import time
from datetime import UTC, datetime

import jwt
import pytest
from starlette.testclient import TestClient

from clinstream.http import build_app
from connectors.security import Authenticator
from indexer.errors import VectorStoreError
from indexer.http import query_routes
from indexer.milvus_store import server_arguments
from indexer.query import ContextualQuery, Hit, KnowledgeHit, TimelineEntry, build_filter
from kernel.audit import summary
from kernel.audit_kafka import MemoryAuditLog
from kernel.errors import AuditUnavailableError
from kernel.events import patient_key
from kernel.settings import HttpSettings
from tests.fakes import FakeEmbedder


def test_filter_scopes_to_one_patient_and_escapes():
    assert build_filter("p1") == 'patient == "p1"'
    injected = build_filter('x" or patient != "')
    assert injected == 'patient == "x\\" or patient != \\""'
    assert build_filter("é\\\n") == 'patient == "é\\\\\\n"'  # no \\u escapes: Milvus knows none


def test_filter_with_types_and_time_window():
    since = datetime(2025, 1, 1, tzinfo=UTC)
    expr = build_filter("p1", types=["Observation"], since=since, until=since)
    assert expr == (
        f'patient == "p1" and resource_type in ["Observation"] and effective >= {int(since.timestamp())}'
        f" and effective <= {int(since.timestamp())}"
    )


def test_filter_requires_a_patient():
    with pytest.raises(ValueError, match="patient"):
        build_filter("")


class FakeStore:
    def __init__(self, fail=False):
        self.fail = fail
        self.calls = []

    def search(self, vector, expr, k, *, question="", mode="dense"):
        if self.fail:
            raise VectorStoreError("down")
        self.calls.append((expr, k, question, mode))
        return [Hit("Observation/k1", "Observation", "Potassium 6.2 mmol/L", 0.9, "2025-01-01")]

    def entries(self, expr, limit):
        if self.fail:
            raise VectorStoreError("down")
        self.calls.append((expr, limit))
        return [TimelineEntry("Encounter/e1", "Encounter", "Encounter: inpatient", "2025-01-02", 1735776000)]


TOKEN = "s3cret-token"


def _client(store):
    return TestClient(
        build_app(TOKEN, query_routes(ContextualQuery(FakeEmbedder(), store)), audit=MemoryAuditLog())
    )


def _auth(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def test_query_requires_a_bearer_token():
    client = _client(FakeStore())
    body = {"patient_id": "p1", "question": "potassium"}
    assert client.post("/query", json=body).status_code == 401
    assert client.post("/query", json=body, headers=_auth("wrong")).status_code == 401
    assert client.post("/query", json=body, headers={"Authorization": TOKEN}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/health").status_code == 200


def test_query_answers_hits_with_citations():
    store = FakeStore()
    response = _client(store).post(
        "/query", json={"patient_id": "HOSP|123", "question": "potassium", "k": 3}, headers=_auth()
    )
    assert response.status_code == 200
    assert response.json() == {
        "results": [
            {
                "resource_id": "Observation/k1",
                "resource_type": "Observation",
                "text": "Potassium 6.2 mmol/L",
                "score": 0.9,
                "date": "2025-01-01",
            }
        ]
    }
    assert store.calls == [(f'patient == "{patient_key("HOSP", "123")}"', 3, "potassium", "dense")]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("not json", 400),
        (b"\xe7\x00\x00", 400),  # not UTF-8: json.loads(bytes) raised UnicodeDecodeError (a 500)
        (b"\x00\x00\x00{", 400),  # looks like UTF-32 to json's detection
        (json.dumps({"question": "x"}), 422),
        (json.dumps({"patient_id": "p1", "question": "x", "k": 0}), 422),
        (json.dumps({"patient_id": "p1", "question": "x", "extra": 1}), 422),
        (json.dumps({"patient_id": "p1", "question": "x", "types": ["Obs'"]}), 422),
    ],
)
def test_bad_requests_get_4xx_without_echo(body, status):
    response = _client(FakeStore()).post("/query", content=body, headers=_auth())
    assert response.status_code == status
    assert "not json" not in response.text


def test_index_down_is_503():
    response = _client(FakeStore(fail=True)).post(
        "/query", json={"patient_id": "p1", "question": "x"}, headers=_auth()
    )
    assert response.status_code == 503


def test_timeline_lists_the_patients_resources_scoped_and_authenticated():
    store = FakeStore()
    client = _client(store)
    assert client.get("/patients/HOSP|123/timeline").status_code == 401
    response = client.get(
        "/patients/HOSP|123/timeline?type=Encounter&type=Observation&since=2025-01-01T00:00:00Z&limit=5",
        headers=_auth(),
    )
    assert response.status_code == 200
    assert response.json() == {
        "entries": [
            {
                "resource_id": "Encounter/e1",
                "resource_type": "Encounter",
                "text": "Encounter: inpatient",
                "date": "2025-01-02",
            }
        ]
    }
    since = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
    key = patient_key("HOSP", "123")
    assert store.calls == [
        (
            f'patient == "{key}" and resource_type in ["Encounter", "Observation"] and effective >= {since}'
            " and chunk_no == 0",
            5,
        )
    ]


@pytest.mark.parametrize("query", ["limit=0", "limit=5000", "since=yesterday", "type=Obs'", "other=1"])
def test_timeline_refuses_bad_parameters(query):
    response = _client(FakeStore()).get(f"/patients/p1/timeline?{query}", headers=_auth())
    assert response.status_code == 422


def test_timeline_index_down_is_503():
    assert _client(FakeStore(fail=True)).get("/patients/p1/timeline", headers=_auth()).status_code == 503


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_query_passes_the_search_mode(mode):
    store = FakeStore()
    body = {"patient_id": "p1", "question": "potassium", "mode": mode}
    assert _client(store).post("/query", json=body, headers=_auth()).status_code == 200
    assert store.calls[0][3] == mode


class FakeKnowledge:
    def __init__(self):
        self.calls = []

    def search(self, vector, question, k, *, mode="dense"):
        self.calls.append((question, k, mode))
        return [
            KnowledgeHit("news2.md", "NEWS2", "Pulse", "RCP 2017", "NEWS2 - Pulse: 131 or more scores 3", 0.5)
        ]


def _kb_client(store, knowledge):
    return TestClient(
        build_app(
            TOKEN, query_routes(ContextualQuery(FakeEmbedder(), store, knowledge)), audit=MemoryAuditLog()
        )
    )


def test_knowledge_query_returns_cited_passages():
    knowledge = FakeKnowledge()
    client = _kb_client(FakeStore(), knowledge)
    body = {"question": "pulse score", "k": 2}
    assert client.post("/knowledge/query", json=body).status_code == 401
    response = client.post("/knowledge/query", json=body, headers=_auth())
    assert response.status_code == 200
    [passage] = response.json()["results"]
    assert (passage["source"], passage["section"], passage["citation"]) == ("news2.md", "Pulse", "RCP 2017")
    assert knowledge.calls == [("pulse score", 2, "dense")]
    assert client.post("/knowledge/query", json={"question": ""}, headers=_auth()).status_code == 422


def test_context_combines_the_patients_record_with_knowledge():
    store, knowledge = FakeStore(), FakeKnowledge()
    body = {"patient_id": "HOSP|123", "question": "is this potassium critical", "k": 3, "knowledge_k": 2}
    response = _kb_client(store, knowledge).post("/context", json=body, headers=_auth())
    assert response.status_code == 200
    assert [r["resource_id"] for r in response.json()["record"]] == ["Observation/k1"]
    assert [p["source"] for p in response.json()["knowledge"]] == ["news2.md"]
    assert store.calls[0][0] == f'patient == "{patient_key("HOSP", "123")}"'
    assert knowledge.calls == [("is this potassium critical", 2, "dense")]


def test_without_a_knowledge_base_there_are_no_passages():
    response = _client(FakeStore()).post("/knowledge/query", json={"question": "x"}, headers=_auth())
    assert response.json() == {"results": []}


class _DownAudit:
    async def write(self, event, patient):
        raise AuditUnavailableError("down")

    async def write_many(self, items):
        raise AuditUnavailableError("down")


def _scoped_client(store, audit):
    secret = "scoped-query-secret-of-32-characters!"
    app = build_app(
        Authenticator(TOKEN, HttpSettings(jwt_hs256_secret=secret)),
        query_routes(ContextualQuery(FakeEmbedder(), store)),
        audit=audit,
    )

    def token(scope=None, **claims):
        body = {"sub": "dr-who", "exp": int(time.time()) + 60, **claims}
        if scope is not None:
            body["scope"] = scope
        return {"Authorization": "Bearer " + jwt.encode(body, secret, algorithm="HS256")}

    return TestClient(app), token


def test_a_search_is_filtered_inside_milvus_to_the_types_the_token_reads():
    store, audit = FakeStore(), MemoryAuditLog()
    client, token = _scoped_client(store, audit)
    body = {"patient_id": "MERCY|100001", "question": "potassium"}

    assert client.post("/query", json=body, headers=token()).status_code == 403  # no scope claim
    assert client.post("/query", json=body, headers=token("system/AuditEvent.rs")).status_code == 403
    assert store.calls == []

    labs = client.post("/query", json=body, headers=token("user/Observation.rs"))
    assert labs.status_code == 200
    assert 'resource_type in ["Observation"]' in store.calls[-1][0]
    everything = client.post("/query", json=body, headers=token("user/*.rs"))
    assert everything.status_code == 200
    assert "resource_type" not in store.calls[-1][0]
    before = len(store.calls)
    asked = client.post("/query", json=body | {"types": ["Condition"]}, headers=token("user/Observation.rs"))
    assert asked.json() == {"results": []}
    assert len(store.calls) == before  # nothing readable asked: nothing searched

    timeline = client.get("/patients/MERCY|100001/timeline", headers=token("user/Encounter.rs"))
    assert timeline.status_code == 200
    assert 'resource_type in ["Encounter"]' in store.calls[-1][0]


def test_each_search_writes_one_audit_event_naming_who_and_what_before_it_answers():
    store, audit = FakeStore(), MemoryAuditLog()
    client, token = _scoped_client(store, audit)
    key = patient_key("MERCY", "100001")
    client.post("/query", json={"patient_id": "MERCY|100001", "question": "k"}, headers=token("user/*.rs"))
    client.post("/knowledge/query", json={"question": "k"}, headers=token("user/*.rs"))  # no patient data
    client.post("/query", json={"patient_id": "p2", "question": "k"}, headers=token("user/Condition.rs"))
    client.post("/query", json={"patient_id": "p2", "question": "k"}, headers=token())  # refused
    found = [(summary(e), p) for e, p in audit.events]
    assert [(s["action"], s["principal"], s["patient"], s["outcome"], p) for s, p in found] == [
        ("POST /query", "jwt:dr-who", key, "success", key),
        ("POST /query", "jwt:dr-who", "p2", "success", "p2"),
        ("POST /query", "jwt:dr-who", None, "refused", None),
    ]
    assert found[0][0]["resources"] == ["Observation/k1"]


def test_no_audit_log_no_answer():
    client, token = _scoped_client(FakeStore(), _DownAudit())
    r = client.post("/query", json={"patient_id": "p1", "question": "k"}, headers=token("user/*.rs"))
    assert r.status_code == 503
    assert "Potassium" not in r.text


def test_a_facility_limited_token_sees_only_its_sites_patients():
    store = FakeStore()
    client, token = _scoped_client(store, MemoryAuditLog())
    mercy = token("user/*.rs", facilities=["MERCY"])
    ok = client.post("/query", json={"patient_id": "MERCY|1", "question": "k"}, headers=mercy)
    assert ok.status_code == 200
    calls = len(store.calls)
    for named in ("GENERAL|1", patient_key("MERCY", "1")):
        r = client.post("/query", json={"patient_id": named, "question": "k"}, headers=mercy)
        assert r.status_code == 403
    assert len(store.calls) == calls


def test_a_milvus_server_is_reached_with_its_token_and_over_tls_when_a_ca_is_set(tmp_path):
    plain = server_arguments("http://milvus:19530", "root:secret")
    assert plain == {"uri": "http://milvus:19530", "token": "root:secret"}
    ca = tmp_path / "ca.pem"
    secured = server_arguments("https://milvus:19530", "root:secret", ca, "milvus")
    assert secured == {
        "uri": "https://milvus:19530",
        "token": "root:secret",
        "secure": True,
        "server_pem_path": str(ca),
        "server_name": "milvus",
    }
