"""Outbound delivery on the real broker: HL7 to a local MLLP endpoint, FHIR PUT to a local HTTP server."""

import asyncio

import pytest
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from clinstream.http import make_server
from clinstream.settings import Settings
from clinstream.stack import running_stack
from connectors.mllp_server import MllpServer
from stream.events import Topics, WritebackOutcome
from stream.settings import MllpSettings
from tests.integration.test_end_to_end import TOKEN, _collect
from tests.unit.test_mllp_server import MemorySink

ORU = (
    b"MSH|^~\\&|CLINSTREAM|HUB|EHR|HOSP|202503060830||ORU^R01^ORU_R01|OUT1|P|2.5.1\r"
    b"PID|1||100002^^^MERCY^MR\rOBX|1|ST|ALERT^Critical potassium^L||K 6.4||||||F\r"
)
FLAG = (
    b'{"resourceType": "Flag", "id": "flag-1", "status": "active", "code": {"text": "K 6.4"}, '
    b'"subject": {"reference": "Patient/p1"}}'
)


@pytest.fixture
async def ehr():
    """A stand-in EHR: an MLLP listener and a FHIR endpoint that records PUTs."""
    mllp_sink = MemorySink()
    mllp = MllpServer(mllp_sink, Topics(), MllpSettings(port=0))
    await mllp.start()
    puts = []

    async def put(request):
        puts.append((request.url.path, request.headers.get("authorization"), await request.json()))
        return JSONResponse({"resourceType": "Flag"}, status_code=201 if len(puts) > 1 else 503)

    server = make_server(Starlette(routes=[Route("/fhir/{type}/{id}", put, methods=["PUT"])]), "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield mllp, mllp_sink, f"http://127.0.0.1:{port}/fhir", puts
    server.should_exit = True
    await task
    await mllp.stop()


async def test_outbound_hl7_and_fhir_are_delivered_and_recorded(broker, topics, prefix, tmp_path, ehr):
    mllp, mllp_sink, fhir_base, puts = ehr
    settings = Settings(
        var_dir=tmp_path,
        kafka={"bootstrap": broker.bootstrap, "enable_idempotence": False},
        mllp={"port": 0},
        http={"port": 0, "api_token": TOKEN},
        outbound={
            "mllp_host": "127.0.0.1",
            "mllp_port": mllp.port,
            "fhir_base_url": fhir_base,
            "fhir_token": "ehr-token",
        },
    )
    async with running_stack(settings, topics=topics, group_prefix=prefix) as stack:
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        await producer.send_and_wait(topics.outbound_hl7v2, ORU, key=b"p1")
        await producer.send_and_wait(topics.outbound_fhir, FLAG, key=b"p1")
        await producer.stop()
        records = await _collect(stack.bootstrap, topics.writeback, lambda s: len(s) >= 2, timeout=60)
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
