"""HL7 over a real socket → normalizer → alert on the alerts topic and a patient-scoped search hit.

The whole stack runs as `clinstream up` runs it (running_stack) against the session's
embedded broker, on fresh topics and consumer groups and its own Milvus Lite file. One stack
serves every check (starting one is the slow part); each check has patients of its own and
reads only their records.
"""

import asyncio
import os
import threading
import time
from datetime import UTC, datetime

import httpx
import pytest

from connectors.mllp_client import MllpClient
from indexer.chunking import plan_record
from indexer.query import build_filter
from kernel.events import (
    Alert,
    ClinicianFeedback,
    DeadLetter,
    Envelope,
    FhirInbound,
    FhirRecord,
    patient_key,
)
from tests.integration.support import CDS_SECRET, TOKEN, cds_jwt, collect, drain

ADT = (
    "MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503030415||ADT^A01^ADT_A01|ADT1|P|2.5.1\r"
    "EVN|A01|202503030415\r"
    "PID|1||{mrn}^^^MERCY^MR||{name}||19580312|F\r"
    "PV1|1|I|4W^412^B^MERCY||||||||||||||||V{mrn}^^^MERCY\r"
)
ORU = (
    "MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|202503060830||ORU^R01^ORU_R01|{ctrl}|P|2.5.1\r"
    "PID|1||{mrn}^^^MERCY^MR||{name}||19580312|F\r"
    "OBR|1|ORD{mrn}|FIL{mrn}^LIS|80048^Basic metabolic panel^C4|||202503060830\r"
    "OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||{k}|mmol/L^mmol/L^UCUM|3.5-5.1||||F|||"
    "202503060830\r"
    "OBX|2|NM|2951-2^Sodium [Moles/volume] in Serum or Plasma^LN||{na}|mmol/L^mmol/L^UCUM|136-145||||F|||"
    "202503060830\r"
)


@pytest.fixture
async def stack(start_stack):
    # The messages below are dated March 2025; the CDS Hooks client signs with an HS256 secret.
    async with start_stack(
        milvus={"collection": "e2e"}, cds={"stale_after_h": 24 * 365 * 50, "jwt_secret": CDS_SECRET}
    ) as s:
        yield s


def _msg(template, **kw):
    return template.format(**kw).encode()


def mine(records, *patients):
    """The records keyed by ``patients`` (each check reads only its own)."""
    keys = {p.encode() for p in patients}
    return [r for r in records if r.key in keys]


async def test_the_stack_end_to_end(stack):
    """Each check on the one stack, in turn."""
    await _hl7_to_alert_and_patient_scoped_search(stack)
    await _redelivered_message_changes_nothing(stack)
    await _fhir_ingress_writes_to_kafka_before_answering(stack)
    await _replayed_dead_letter_is_processed_again(stack)
    await _fhir_transaction_is_normalized_indexed_and_alerted(stack)
    await _alert_becomes_a_cds_hooks_card_and_feedback_reaches_the_topic(stack)


async def _wait_count(store, expr, n, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(store.count, expr) >= n:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"index did not reach {n} chunks for {expr}")


async def _hl7_to_alert_and_patient_scoped_search(stack):
    alice, bob = patient_key("MERCY", "900001"), patient_key("MERCY", "900002")
    async with MllpClient("127.0.0.1", stack.mllp_port) as client:
        codes = [
            (await client.send(_msg(ADT, mrn="900001", name="TEST^ALICE"))).code,
            (
                await client.send(_msg(ORU, ctrl="L1", mrn="900001", name="TEST^ALICE", k="6.7", na="138"))
            ).code,
            (await client.send(_msg(ORU, ctrl="L2", mrn="900002", name="TEST^BOB", k="4.0", na="141"))).code,
            (await client.send(_msg(ORU, ctrl="L3", mrn="900002", name="TEST^BOB", k="4,0", na="141"))).code,
        ]
    assert codes == ["AA", "AA", "AA", "AA"]

    alerts = mine(
        await collect(stack.bootstrap, stack.topics.alerts, lambda s: len(mine(s, alice, bob)) >= 1),
        alice,
        bob,
    )
    alert = Alert.model_validate_json(alerts[0].value)
    assert alert.patient_id == alice
    assert alerts[0].key == alice.encode()
    assert "6.7 mmol/L" in alert.summary

    # "4,0" is no NM: the result converts, the value kept as sent, with a data-quality issue.
    def flagged(seen):
        return [
            r for r in (FhirRecord.model_validate_json(x.value) for x in mine(seen, alice, bob)) if r.issues
        ]

    [record] = flagged(await collect(stack.bootstrap, stack.topics.fhir, lambda s: len(flagged(s)) >= 1))
    assert record.envelope.source_message_id == "L3"
    assert [(i.code, i.location) for i in record.issues] == [("malformed-value", "OBX[1]-5")]
    assert "4,0" in [r.get("valueString") for r in record.resources]

    await _wait_count(stack.store, build_filter(alice), 2)
    await _wait_count(stack.store, build_filter(bob), 2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}") as http:
        unauthorized = await http.post("/query", json={"patient_id": alice, "question": "potassium"})
        assert unauthorized.status_code == 401
        response = await http.post(
            "/query",
            json={"patient_id": "MERCY|900001", "question": "potassium level", "k": 5},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    assert response.status_code == 200
    results = response.json()["results"]
    assert results[0]["text"].startswith("Potassium [Moles/volume] in Serum or Plasma 6.7 mmol/L")
    assert alert.evidence[0] == results[0]["resource_id"]
    bob_hits = await asyncio.to_thread(stack.query.search, bob, "potassium level", k=10)
    assert {h.resource_id for h in bob_hits}.isdisjoint({r["resource_id"] for r in results})

    # The chunks above were embedded and written by the indexer's own thread, below the
    # priority of the event loop that ACKs, normalizes and alerts.
    writers = [t for t in threading.enumerate() if t.name.startswith("clinstream-indexer")]
    assert len(writers) == 1
    assert writers[0].native_id is not None
    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    expected = min(19, here + stack.settings.indexer.cpu_nice)
    assert os.getpriority(os.PRIO_PROCESS, writers[0].native_id) == expected > here


async def _redelivered_message_changes_nothing(stack):
    carol = patient_key("MERCY", "900003")
    oru = dict(mrn="900003", name="TEST^CAROL", k="6.1", na="139")
    async with MllpClient("127.0.0.1", stack.mllp_port) as client:
        assert (await client.send(_msg(ORU, ctrl="R1", **oru))).code == "AA"
        # The same result resent under a new control id (an interface engine replay).
        assert (await client.send(_msg(ORU, ctrl="R2", **oru))).code == "AA"
    records = mine(
        await collect(stack.bootstrap, stack.topics.fhir, lambda s: len(mine(s, carol)) >= 2), carol
    )
    first, second = (FhirRecord.model_validate_json(r.value) for r in records[:2])
    assert [r["id"] for r in first.resources] == [r["id"] for r in second.resources]
    await collect(stack.bootstrap, stack.topics.alerts, lambda s: len(mine(s, carol)) >= 1)
    expected = len(plan_record(first).upserts)  # patient, encounter, order, report, 2 results
    assert expected >= 5
    await _wait_count(stack.store, build_filter(carol), expected)
    await asyncio.sleep(1.0)  # give a duplicate write the chance to show up
    assert await asyncio.to_thread(stack.store.count, build_filter(carol)) == expected
    # Decision support held the replay as a duplicate: one alert on the topic, not two.
    alerts = mine(await drain(stack.bootstrap, stack.topics.alerts, seconds=2.0), carol)
    assert [Alert.model_validate_json(a.value).rule_id for a in alerts] == ["critical-lab"]


async def _fhir_ingress_writes_to_kafka_before_answering(stack):
    patient = {"resourceType": "Patient", "id": "fhir-p1", "gender": "female"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}") as http:
        metadata = await http.get("/fhir/metadata")
        refused = await http.put(
            "/fhir/Patient/fhir-p1",
            json={**patient, "gender": "f"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        accepted = await http.put(
            "/fhir/Patient/fhir-p1", json=patient, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert metadata.status_code == 200
    assert refused.status_code == 400
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert accepted.status_code == 200

    def ours(seen):
        return [r for r in seen if FhirInbound.model_validate_json(r.value).resources[0]["id"] == "fhir-p1"]

    [record] = ours(await collect(stack.bootstrap, stack.topics.inbound_fhir, lambda s: len(ours(s)) >= 1))
    assert FhirInbound.model_validate_json(record.value).resources[0]["id"] == "fhir-p1"

    def refused_here(seen):
        return [
            d for d in (DeadLetter.model_validate_json(r.value) for r in seen) if d.stage == "connectors.fhir"
        ]

    await asyncio.sleep(1.0)  # a second dead letter for the one refusal would show by now
    [letter] = refused_here(
        await collect(stack.bootstrap, stack.topics.deadletter, lambda s: len(refused_here(s)) >= 1)
    )
    assert letter.error_type


async def _replayed_dead_letter_is_processed_again(stack):
    from kernel.replay import Selection, as_replay, plan
    from kernel.replay_kafka import read_dead_letters, republish
    from kernel.settings import KafkaSettings, producer_config

    oru = _msg(ORU, ctrl="RP1", mrn="900009", name="TEST^DORA", k="4.4", na="140")
    envelope = Envelope(
        source_system="LIS^MERCY_LAB",
        source_message_id="RP1",
        content_hash="h",
        received_at=datetime.now(UTC),
        trace_id="replaytrace",
        message_type="ORU^R01",
    )
    # As if the normalizer had failed on this message because of a bug since fixed.
    failed = DeadLetter(
        stage="normalizer",
        source_topic=stack.topics.inbound_hl7v2,
        partition=0,
        offset=7,
        error_type="KeyError",
        reason="internal error",
        payload_sha256="x",
        payload=oru,
        envelope=envelope,
        key=patient_key("MERCY", "900009").encode(),
    )
    edge = DeadLetter(
        stage="connectors.mllp", error_type="Hl7ParseError", reason="bad", payload_sha256="y", payload=b"junk"
    )
    producer = producer_config(KafkaSettings(enable_idempotence=False), stack.bootstrap, tansu=True)
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(**producer)
    await p.start()
    for letter in (failed, edge):
        await p.send_and_wait(stack.topics.deadletter, letter.model_dump_json().encode())
    await p.stop()
    letters = await read_dead_letters(stack.bootstrap, stack.topics)
    todo, refused = plan(letters, Selection(ids=frozenset({failed.id, edge.id})))
    assert [x.id for x in todo] == [failed.id]
    assert [x.id for x in refused] == [edge.id]
    assert len(await republish(producer, [as_replay(letter) for letter in todo])) == 1
    records = await collect(
        stack.bootstrap,
        stack.topics.fhir,
        lambda s: any(FhirRecord.model_validate_json(r.value).envelope.trace_id == "replaytrace" for r in s),
    )
    replayed = [
        r for r in records if FhirRecord.model_validate_json(r.value).envelope.trace_id == "replaytrace"
    ]
    assert replayed[0].key == patient_key("MERCY", "900009").encode()


async def _fhir_transaction_is_normalized_indexed_and_alerted(stack):
    patient = {"resourceType": "Patient", "id": "fx-p1", "gender": "male"}
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "Potassium"}]},
        "subject": {"reference": "urn:uuid:2b7a3a59-8f1e-4d6a-9d8c-000000000001"},
        "effectiveDateTime": "2025-03-06T08:30:00+00:00",
        "valueQuantity": {
            "value": 6.9,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:2b7a3a59-8f1e-4d6a-9d8c-000000000001",
                "resource": patient,
                "request": {"method": "PUT", "url": "Patient/fx-p1"},
            },
            {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}") as http:
        response = await http.post("/fhir", json=bundle, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    alerts = await collect(
        stack.bootstrap,
        stack.topics.alerts,
        lambda s: any(Alert.model_validate_json(a.value).patient_id == "fx-p1" for a in s),
    )
    assert any("6.9 mmol/L" in Alert.model_validate_json(a.value).summary for a in alerts)
    await _wait_count(stack.store, build_filter("fx-p1"), 1)
    hits = await asyncio.to_thread(stack.query.search, "fx-p1", "potassium", k=3)
    assert hits[0].text.startswith("Potassium 6.9 mmol/L")


async def _alert_becomes_a_cds_hooks_card_and_feedback_reaches_the_topic(stack):
    dave = patient_key("MERCY", "900004")
    async with MllpClient("127.0.0.1", stack.mllp_port) as client:
        oru = _msg(ORU, ctrl="H1", mrn="900004", name="TEST^DAVE", k="6.6", na="118")
        assert (await client.send(oru)).code == "AA"
    await collect(
        stack.bootstrap, stack.topics.alerts, lambda s: len(mine(s, dave)) >= 2
    )  # potassium and sodium
    service = "/cds-services/clinstream-alerts"
    hook = {
        "hook": "patient-view",
        "hookInstance": "h-1",
        "context": {"patientId": dave, "userId": "Practitioner/1"},
    }
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}") as http:
        for _ in range(50):  # the state is saved right after the alerts are published
            response = await http.post(
                service, json=hook, headers={"Authorization": f"Bearer {cds_jwt(stack.http_port, service)}"}
            )
            cards = response.json()["cards"]
            if len(cards) == 2:
                break
            await asyncio.sleep(0.1)
        assert sorted(c["summary"].split(":")[0] for c in cards) == [
            "Critical high potassium",
            "Critical low sodium",
        ]
        assert (await http.post(service, json=hook)).status_code == 401
        feedback = {
            "feedback": [
                {
                    "card": cards[0]["uuid"],
                    "outcome": "accepted",
                    "outcomeTimestamp": datetime.now(UTC).isoformat(),
                }
            ]
        }
        answer = await http.post(
            f"{service}/feedback",
            json=feedback,
            headers={"Authorization": f"Bearer {cds_jwt(stack.http_port, service + '/feedback')}"},
        )
    assert answer.status_code == 200
    [record] = mine(
        await collect(stack.bootstrap, stack.topics.feedback, lambda s: len(mine(s, dave)) >= 1), dave
    )
    event = ClinicianFeedback.model_validate_json(record.value)
    assert (event.patient_id, event.outcome, event.target_id) == (dave, "accepted", cards[0]["uuid"])
    assert record.key == dave.encode()
