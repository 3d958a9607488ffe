"""Outages of the shared services, with every stage as its own process.

Broker down: the connectors never send a positive ACK while Kafka is unreachable; the
sender's retries deliver every message once it is back. Milvus down: the indexer stops
committing offsets (nothing is marked done that is not in Milvus) and catches up afterwards.
"""

import asyncio
import time

import httpx
import pytest

from clinstream.runtime import ensure_topics, free_port
from indexer.chunking import plan_record
from kernel.events import TOPICS, Envelope
from tests.integration.processes import (
    TOKEN,
    Sender,
    StageProcess,
    base_env,
    deployment,
    drain,
    expected_chunks,
    fhir_records,
    lag_of,
    load_messages,
    own_broker,
    wait_settled,
    with_control_id,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("kind", ["kafka", "tansu"])
async def test_no_positive_ack_while_the_broker_is_down_and_retries_deliver_after(tmp_path, kind):
    port = free_port()
    seeds = load_messages()
    before = [("B0000", with_control_id(seeds[0], "B0000"))]
    during = [(f"B{n:04d}", with_control_id(seeds[n], f"B{n:04d}")) for n in range(1, 21)]
    broker = own_broker(kind, tmp_path, port=port)
    await broker.__aenter__()
    # Confirmations time out after 3 s, so each attempt during the outage ends quickly.
    env = base_env(
        broker.bootstrap, tmp_path, tansu=kind == "tansu", CLINSTREAM_KAFKA__REQUEST_TIMEOUT_MS="3000"
    )
    connectors = StageProcess(["connectors"], env, tmp_path / "connectors.log")
    try:
        connectors.start()
        await connectors.wait_ready()
        sender = Sender(connectors.mllp_port)
        await sender.run(before, rate=10)
        assert sender.answers == {"B0000": "AA"}

        broker.stop()  # Kafka goes away under the running connectors
        load = asyncio.create_task(sender.run(during, rate=10))
        await asyncio.sleep(12)
        assert sender.answers == {"B0000": "AA"}, "an answer was sent while the broker was down"
        assert sender.retries >= 2
        down_retries = sender.retries

        # The broker comes back (Apache Kafka with its log; Tansu empty, so the operators
        # recreate the topics); the sender's retries now go through.
        broker = own_broker(kind, tmp_path, port=port)
        await broker.__aenter__()
        await ensure_topics(broker.bootstrap, TOPICS.all(), partitions=1, replication_factor=1)
        started = time.monotonic()
        await asyncio.wait_for(load, timeout=180)
        recovered_s = time.monotonic() - started
        stored = await drain(broker.bootstrap, TOPICS.inbound_hl7v2)
    finally:
        connectors.stop()
        broker.stop()
    assert all(sender.answers[cid] == "AA" for cid, _ in during)
    ids = {Envelope.from_headers(r.headers).source_message_id for r in stored}
    assert {cid for cid, _ in during} <= ids, "an acknowledged message is not in Kafka"
    if kind == "kafka":
        assert "B0000" in ids, "Apache Kafka lost a message acknowledged before it stopped"
    print(
        f"\nbroker outage ({kind}): {down_retries} attempts unanswered; "
        f"all 20 delivered {recovered_s:.1f} s after it returned"
    )


async def test_milvus_down_holds_the_indexer_offsets_until_it_is_back(tmp_path):
    seeds = load_messages()
    first = [(f"M{n:04d}", with_control_id(m, f"M{n:04d}")) for n, m in enumerate(seeds[:60])]
    second = [(f"M{n:04d}", with_control_id(m, f"M{n:04d}")) for n, m in enumerate(seeds[60:160], start=60)]
    async with deployment(tmp_path, {n: [n] for n in ("connectors", "normalizer", "indexer")}) as d:
        bootstrap, milvus = d.broker.bootstrap, d.milvus
        sender = Sender(d.procs["connectors"].mllp_port)
        await sender.run(first, rate=50)
        await wait_settled(bootstrap, ("normalizer", "indexer"))

        milvus.kill9()
        await sender.run(second, rate=50)
        await wait_settled(bootstrap, ("normalizer",))
        await asyncio.sleep(6)  # the indexer retries against the dead Milvus meanwhile
        held = (await lag_of(bootstrap))["indexer"]
        assert held > 0, "the indexer committed offsets while Milvus was down"

        await milvus.start()  # same data directory and port
        started = time.monotonic()
        await wait_settled(bootstrap, ("indexer",), timeout_s=240)
        caught_up_s = time.monotonic() - started
        await asyncio.sleep(2)
        records = await fhir_records(bootstrap)
        # The indexer's query API searches the restarted Milvus (it loads the collection again).
        indexed = set(expected_chunks(records))
        patient = next(r.patient_id for _, _, r in records if indexed & set(plan_record(r).keep))
        async with httpx.AsyncClient(base_url=d.procs["indexer"].url, headers=AUTH, timeout=60) as http:
            answer = await http.post("/query", json={"patient_id": patient, "question": "results"})
        rows = await asyncio.to_thread(milvus.rows)
    assert {cid for cid, code in sender.answers.items() if code == "AA"} == {cid for cid, _ in first + second}
    want = expected_chunks(records)
    found: dict[str, int] = {}
    for row in rows:
        found[str(row["resource_id"])] = found.get(str(row["resource_id"]), 0) + 1
    assert found == want, (len(found), len(want))
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"], "no search result after Milvus came back"
    print(
        f"\nmilvus outage: indexer held {held} records uncommitted; "
        f"caught up {caught_up_s:.1f} s after Milvus returned"
    )
