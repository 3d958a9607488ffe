"""Kill -9 under load: each stage runs as its own `clinstream run` process against a real broker
and a Milvus server process; one after another is killed and restarted while the corpus
streams in. Afterwards the counts must say that nothing was lost and nothing doubled.

On Apache Kafka (idempotent producers, decision support's batches as transactions) no alert may
be on the topic twice; on Tansu (no transactions) decision support is at-least-once: an alert
raised again after a kill carries the same id, and no alert may be missing."""

import asyncio
from collections import Counter

import pytest

from kernel.events import TOPICS, Alert
from tests.integration.processes import (
    Sender,
    deployment,
    drain,
    expected_chunks,
    fhir_records,
    load_messages,
    single_instance_alerts,
    wait_settled,
    with_control_id,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
GROUPS = ("normalizer", "indexer", "cds")


@pytest.mark.parametrize("broker", ["kafka", "tansu"])
async def test_kill_each_stage_under_load_loses_and_doubles_nothing(tmp_path, broker):
    messages = [(f"F{n:05d}", with_control_id(m, f"F{n:05d}")) for n, m in enumerate(load_messages())]
    assert len(messages) >= 500
    procs = {name: [name] for name in ("normalizer", "indexer", "inference", "connectors")}
    async with deployment(
        tmp_path, procs, broker=broker, CLINSTREAM_KAFKA__PARTITIONS="3", CLINSTREAM_NOTES__ENABLED="false"
    ) as d:
        stages = d.procs
        sender = Sender(stages["connectors"].mllp_port)
        load = asyncio.create_task(sender.run(messages, rate=12.0))
        killed = []
        for name in ("connectors", "normalizer", "indexer", "inference"):
            await asyncio.sleep(6)
            assert not load.done(), "the load ended before every stage was killed"
            stages[name].kill9()
            killed.append(name)
            await asyncio.sleep(1)
            stages[name].start()  # restarting while the next one is killed
        await asyncio.gather(*(s.wait_ready() for s in stages.values()))
        await load
        assert killed == ["connectors", "normalizer", "indexer", "inference"]
        await wait_settled(d.broker.bootstrap, GROUPS)
        await asyncio.sleep(2)  # the indexer seals its last batch by age
        records = await fhir_records(d.broker.bootstrap)
        alerts = [Alert.model_validate_json(r.value) for r in await drain(d.broker.bootstrap, TOPICS.alerts)]
        rows = await asyncio.to_thread(d.milvus.rows)

    accepted = {cid for cid, code in sender.answers.items() if code == "AA"}
    assert sender.retries > 0, "the connectors' outage was not felt by the sender"
    assert len(accepted) == len(messages), Counter(sender.answers.values())
    normalized = {r.envelope.source_message_id for _, _, r in records}
    assert accepted <= normalized, f"{len(accepted - normalized)} acknowledged messages never normalized"

    want = expected_chunks(records)
    found = Counter(str(row["resource_id"]) for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)
    assert set(found) == set(want), (sorted(set(want) - set(found))[:5], sorted(set(found) - set(want))[:5])
    assert found == Counter(want), "a resource is in Milvus with more or fewer chunks than planned"

    assert alerts, "the load raised no alert"
    doubled = [a for a, n in Counter(a.id for a in alerts).items() if n > 1]
    if broker == "kafka":
        assert doubled == [], f"{len(doubled)} alerts published twice"
    wanted = single_instance_alerts(records)
    assert {a.id for a in alerts} == wanted, "alerts differ from a single uninterrupted run's"
