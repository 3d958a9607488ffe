"""Large inputs on the real embedded broker: a patient's history over 1 MB converts end to end,
and an input larger than ``max_record_bytes`` is refused to its sender (AR / 413), not a 500."""

import base64
import json
import os

import httpx
import pytest

from clinstream.runtime import ensure_topics
from connectors.kafka_sink import make_sink
from connectors.mllp_client import MllpClient
from connectors.mllp_server import MllpServer
from kernel.events import DeadLetter, FhirRecord
from kernel.settings import KafkaSettings, MllpSettings, producer_config
from tests.conftest import corpora_dir
from tests.integration.support import TOKEN, collect

SYNTHEA = corpora_dir() / "fhir" / "smart-synthea-r4"
ORU = (
    "MSH|^~\\&|RIS|MERCY|EHR|MERCY|202503061000||ORU^R01^ORU_R01|BIG%d|P|2.5.1\r"
    "PID|1||700%d^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    "OBR|1|RAD%d|RAD%dF|71045^XR chest 1 view^C4|||202503060900|||||||||||||||||F\r"
    "OBX|1|ED|IMG^Image^L||^IM^JPEG^Base64^%s||||||F\r"
)


def _oru(n: int, size: int) -> bytes:
    data = base64.b64encode(os.urandom(size)).decode()
    return (ORU % (n, n, n, n, data)).encode()


def _history(*names: str) -> dict:
    """One transaction of several Synthea patients' whole records (each over 1 MB)."""
    entries = []
    for name in names:
        entries += json.loads(next(SYNTHEA.glob(f"{name}_*.json")).read_text())["entry"]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
async def test_message_over_the_record_limit_gets_ar_from_the_real_sink(broker, topics, client):
    await ensure_topics(broker.bootstrap, topics.all(), partitions=2, replication_factor=1)
    kafka = KafkaSettings(request_timeout_ms=3000, ingest_client=client, max_record_bytes=1024 * 1024)
    sink = make_sink(
        client, producer_config(kafka, broker.bootstrap, tansu=broker.kind == "tansu"), confirm_timeout_s=5
    )
    await sink.start()
    server = MllpServer(sink, topics, MllpSettings(port=0))
    await server.start()
    try:
        async with MllpClient("127.0.0.1", server.port) as mllp:
            fits = await mllp.send(_oru(1, 600_000))
            too_big = await mllp.send(_oru(2, 1_200_000))
    finally:
        await server.stop()
        await sink.stop()
    assert fits.code == "AA"
    assert too_big.code == "AR"
    assert b"larger than the broker accepts" in too_big.raw
    [letter] = await collect(broker.bootstrap, topics.deadletter, lambda s: len(s) >= 1)
    assert DeadLetter.model_validate_json(letter.value).error_type == "RecordTooLargeError"


async def test_histories_and_results_over_a_megabyte_convert_end_to_end(start_stack):
    names = ("Latanya_Kohler", "Twyla_Moen", "Tarsha_Stokes")
    body = json.dumps(_history(*names)).encode()
    assert len(body) > 1_500_000  # compact JSON; the files as published are 4 MB
    async with start_stack(milvus={"collection": "large"}) as stack:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=60) as http:
            response = await http.post(
                "/fhir",
                content=body,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"},
            )
        assert response.status_code == 200, response.text[:300]
        async with MllpClient("127.0.0.1", stack.mllp_port) as mllp:
            assert (await mllp.send(_oru(3, 2_500_000))).code == "AA"

        def done(seen):
            records = [FhirRecord.model_validate_json(r.value) for r in seen]
            patients = {
                name
                for rec in records
                for r in rec.resources
                if r["resourceType"] == "Patient"
                for name in names
                if name.split("_")[1] in json.dumps(r.get("name", []))
            }
            documents = [
                r for rec in records for r in rec.resources if r["resourceType"] == "DocumentReference"
            ]
            return patients == set(names) and documents

        seen = await collect(stack.bootstrap, stack.topics.fhir, done, timeout=90)
    assert max(len(r.value) for r in seen) > 1_000_000
