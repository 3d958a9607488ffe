"""The mapping assistant's routes over a real Starlette app and store: what is listed, what a
confirmation writes, what is refused, and a re-run started in the background."""

from decimal import Decimal

import pytest
from starlette.testclient import TestClient

from clinstream.http import build_app
from connectors.security import Authenticator
from inference.cds.terminology import CodeMapping, Sighting
from inference.cds.terminology_http import Terminology
from inference.cds.terminology_store import TerminologyStore
from kernel.audit_kafka import MemoryAuditLog
from kernel.changelog_store import Entry
from kernel.settings import HttpSettings

TOKEN = "terminology-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LAB, LOCAL = "LIS^MERCY_LAB", "urn:clinstream:codesystem:L"


@pytest.fixture
def env():
    store = TerminologyStore(":memory:")
    seen = Sighting(
        sender=LAB, system=LOCAL, code="K", display="Potassium", count=4, units={"mmol/L": 4},
        low=Decimal("3.9"), high=Decimal("6.9"), unit_of_range="mmol/L",
    )  # fmt: skip
    store.unmapped.apply(
        [
            Entry(
                '[0,"LIS^MERCY_LAB","urn:clinstream:codesystem:L","K"]', seen.model_dump_json().encode(), 0, 1
            )
        ]
    )
    written, reran = [], []

    async def publish(records):
        written.extend(records)
        for r in records:  # what the changelog reader does once the broker has it
            store.mappings.apply([Entry(r.key.decode(), r.payload, 0, len(written))])
        store.refresh()
        return [(0, len(written))]

    async def caught_up():
        return 0.0

    async def rerun(mapping: CodeMapping, progress):
        reran.append(mapping.current.version)
        progress(10, 1)
        return 1

    routes = Terminology(store, "terminology.mappings.v1", publish, caught_up, rerun).routes()
    client = TestClient(build_app(Authenticator(TOKEN, HttpSettings()), routes, audit=MemoryAuditLog()))
    return client, store, written, reran


def test_unknown_codes_are_listed_with_suggestions(env):
    client, *_ = env
    [code] = client.get("/terminology/unmapped", headers=AUTH).json()["codes"]
    assert (code["sender"], code["code"], code["count"], code["low"], code["high"]) == (
        LAB,
        "K",
        4,
        "3.9",
        "6.9",
    )
    assert code["suggestions"][0]["loinc"] == "2823-3"
    assert client.get("/terminology/unmapped?limit=0", headers=AUTH).status_code == 422


def test_a_confirmation_is_written_versioned_applied_and_re_run(env):
    client, store, written, reran = env
    body = {
        "sender": LAB,
        "system": LOCAL,
        "code": "K",
        "loinc": "2823-3",
        "rerun": True,
        "on_behalf_of": "ian",
    }
    first = client.post("/terminology/mappings", headers=AUTH, json=body)
    assert first.status_code == 200, first.text
    current = first.json()["mapping"]["current"]
    assert (current["version"], current["loinc"], current["analyte"]) == (1, "2823-3", "potassium")
    assert (current["by"], current["on_behalf_of"]) == ("api-token", "ian")
    assert [r.topic for r in written] == ["terminology.mappings.v1"]
    assert store.local_codes(LAB)[f"{LOCAL}|K"] == "potassium"
    assert client.get("/terminology/unmapped", headers=AUTH).json()["codes"] == []  # mapped now
    second = client.post(
        "/terminology/mappings", headers=AUTH, json={**body, "loinc": "6298-4", "rerun": False}
    )
    [mapping] = client.get("/terminology/mappings", headers=AUTH).json()["mappings"]
    assert second.json()["mapping"]["current"]["version"] == mapping["current"]["version"] == 2
    assert [v["loinc"] for v in mapping["history"]] == ["2823-3"]
    assert reran == [1]
    assert mapping["rerun"]["state"] == "done"


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"loinc": "potassium"}, "LOINC code"),
        ({"analyte": "sodium"}, "is potassium"),
        ({"code": ""}, "invalid fields: code"),
        ({"surprise": 1}, "invalid fields: surprise"),
    ],
)
def test_a_mapping_that_cannot_be_right_is_refused_and_nothing_written(env, change, detail):
    client, _, written, _ = env
    body = {"sender": LAB, "system": LOCAL, "code": "K", "loinc": "2823-3"} | change
    refused = client.post("/terminology/mappings", headers=AUTH, json=body)
    assert refused.status_code == 422
    assert detail in refused.json()["detail"]
    assert written == []


def test_every_route_needs_a_token(env):
    client, *_ = env
    assert client.get("/terminology/unmapped").status_code == 401
    assert client.post("/terminology/mappings", json={}).status_code == 401
