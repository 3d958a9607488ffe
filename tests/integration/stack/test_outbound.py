"""Outbound delivery on the real broker: HL7 to a local MLLP endpoint, FHIR PUT to a local HTTP server."""

import asyncio

import httpx
from aiokafka import AIOKafkaProducer

from connectors.mllp_client import MllpClient
from inference.cds.writeback import provenance
from kernel.events import Alert, WritebackOutcome, patient_key
from kernel.hl7v2.parser import parse_message
from tests.integration.support import CDS_SECRET, cds_jwt, collect, drain

ORU = (
    b"MSH|^~\\&|CLINSTREAM|HUB|EHR|HOSP|202503060830||ORU^R01^ORU_R01|OUT1|P|2.5.1\r"
    b"PID|1||100002^^^MERCY^MR\rOBX|1|ST|ALERT^Critical potassium^L||K 6.4||||||F\r"
)
FLAG = (
    b'{"resourceType": "Flag", "id": "flag-1", "status": "active", "code": {"text": "K 6.4"}, '
    b'"subject": {"reference": "Patient/p1"}}'
)


async def test_outbound_hl7_and_fhir_are_delivered_and_recorded(start_stack, topics, ehr):
    mllp, mllp_sink, fhir_base, puts = ehr
    async with start_stack(
        outbound={
            "mllp_host": "127.0.0.1",
            "mllp_port": mllp.port,
            "fhir_base_url": fhir_base,
            "fhir_token": "ehr-token",
        },
    ) as stack:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        await producer.send_and_wait(topics.outbound_hl7v2, ORU, key=b"p1")
        await producer.send_and_wait(topics.outbound_fhir, FLAG, key=b"p1")
        await producer.stop()
        records = await collect(stack.bootstrap, topics.writeback, lambda s: len(s) >= 2, timeout=60)
    outcomes = {o.channel: o for o in (WritebackOutcome.model_validate_json(r.value) for r in records)}
    assert (outcomes["mllp"].outcome, outcomes["mllp"].status, outcomes["mllp"].target) == (
        "delivered",
        "AA",
        "OUT1",
    )
    assert (outcomes["fhir"].outcome, outcomes["fhir"].status, outcomes["fhir"].attempts) == (
        "delivered",
        "201",
        2,
    )
    assert mllp_sink.records[0][1] == ORU
    assert [(p, a) for p, a, _ in puts] == [("/fhir/Flag/flag-1", "Bearer ehr-token")] * 2


LAB = (
    "MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|{ts}||ORU^R01^ORU_R01|{ctrl}|P|2.5.1\r"
    "PID|1||900077^^^MERCY^MR||TEST^ERIN||19580312|F\r"
    "OBR|1|ORD{ctrl}|FIL{ctrl}^LIS|80048^Basic metabolic panel^C4|||{ts}\r"
    "{obx}"
)
CREATININE = "OBX|{n}|NM|2160-0^Creatinine^LN||{v}|mg/dL^mg/dL^UCUM|0.6-1.1||||F|||{ts}\r"
POTASSIUM = "OBX|{n}|NM|2823-3^Potassium^LN||{v}|mmol/L^mmol/L^UCUM|3.5-5.1||||F|||{ts}\r"


def _lab(ctrl, ts, *obx):
    lines = "".join(template.format(n=n, v=v, ts=ts) for n, (template, v) in enumerate(obx, 1))
    return LAB.format(ctrl=ctrl, ts=ts, obx=lines).encode()


async def test_critical_potassium_and_creatinine_rise_become_cards_and_reach_the_ehr(
    start_stack, topics, ehr
):
    """ORU over MLLP → deduplicated alerts → a patient-view card each → DetectedIssue PUTs and ORU^R01s."""
    mllp, mllp_sink, fhir_base, puts = ehr
    erin = patient_key("MERCY", "900077")
    async with start_stack(
        outbound={"mllp_host": "127.0.0.1", "mllp_port": mllp.port, "fhir_base_url": fhir_base},
        notes={"writeback_fhir": False, "writeback_hl7": False},  # this test counts alert deliveries
        cds={
            "stale_after_h": 24 * 365 * 50,  # the messages are dated March 2025
            "jwt_secret": CDS_SECRET,
            "writeback_fhir": True,
            "writeback_hl7": True,
            "writeback_hl7_receiver": "EPIC^MERCY",
        },
    ) as stack:
        async with MllpClient("127.0.0.1", stack.mllp_port) as client:
            baseline = _lab("C1", "202503050830", (CREATININE, "1.0"))
            rise = _lab("C2", "202503060830", (POTASSIUM, "6.4"), (CREATININE, "1.6"))
            later = _lab("C3", "202503060930", (POTASSIUM, "6.5"))  # same band within the window: held
            codes = [(await client.send(m)).code for m in (baseline, rise, rise, later)]  # `rise` redelivered
        assert codes == ["AA"] * 4
        await collect(stack.bootstrap, topics.alerts, lambda s: len(s) >= 2)
        raised = await drain(stack.bootstrap, topics.alerts, seconds=3)  # a duplicate would show up
        alerts = [Alert.model_validate_json(r.value) for r in raised]
        assert sorted(a.rule_id for a in alerts) == ["aki-kdigo", "critical-lab"]
        assert {a.patient_id for a in alerts} == {erin}

        service = "/cds-services/clinstream-alerts"
        hook = {
            "hook": "patient-view",
            "hookInstance": "h-9",
            "context": {"patientId": erin, "userId": "Practitioner/1"},
        }
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}") as http:
            for _ in range(50):
                token = cds_jwt(stack.http_port, service)
                cards = (
                    await http.post(service, json=hook, headers={"Authorization": f"Bearer {token}"})
                ).json()["cards"]
                if len(cards) == 2:
                    break
                await asyncio.sleep(0.1)
        assert sorted(c["uuid"] for c in cards) == sorted(a.id for a in alerts)

        outcomes = await collect(stack.bootstrap, topics.writeback, lambda s: len(s) >= 6, timeout=60)
    delivered = [WritebackOutcome.model_validate_json(r.value) for r in outcomes]
    assert sorted(o.channel for o in delivered) == ["fhir"] * 4 + ["mllp"] * 2
    assert {o.outcome for o in delivered} == {"delivered"}
    paths = {p for p, _, _ in puts}
    assert paths == {f"/fhir/DetectedIssue/{a.id}" for a in alerts} | {
        f"/fhir/Provenance/{provenance(a)['id']}" for a in alerts
    }
    issues = [body for path, _, body in puts if "/DetectedIssue/" in path]
    assert {i["patient"]["identifier"]["value"] for i in issues} == {"900077"}
    orus = [parse_message(received[1].decode()) for received in mllp_sink.records]
    assert sorted(m.first("OBX").value(3) for m in orus) == ["aki-kdigo", "critical-lab"]
    assert {m.msh.value(5) for m in orus} == {"EPIC"}
