"""A power cut under the embedded default: `clinstream up` (every stage, the embedded Apache
Kafka, Milvus Lite) is killed with SIGKILL, its whole process group at once, right after the last
ACK, then started again on the same data directory. Every message acknowledged AA is normalized,
indexed and decided: nothing the edge acknowledged is lost.

(SIGKILL of every process is a crash of the software, not of the machine: what the kernel had
accepted from the broker's writes survives, as it does on a real power cut only once the page
cache reached the disk; docs/deploy.md says what that means for a single-node broker.)"""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from clinstream.runtime import free_port
from kernel.events import TOPICS, Alert, Envelope
from tests.integration.processes import (
    CORPUS_STALE_AFTER_H,
    Sender,
    drain,
    expected_chunks,
    fhir_records,
    load_messages,
    single_instance_alerts,
    wait_settled,
    with_control_id,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[3]


def _up(tmp_path: Path, mllp_port: int, log: Path, start: int) -> tuple[subprocess.Popen[str], str]:
    """`clinstream up` (its ``start``-th on ``log``) in its own process group; returns it and its
    Kafka bootstrap."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    env.update(
        CLINSTREAM_VAR_DIR=str(tmp_path / "var"),
        CLINSTREAM_MLLP__PORT=str(mllp_port),
        CLINSTREAM_HTTP__PORT="0",
        CLINSTREAM_DASHBOARD__ENABLED="false",
        CLINSTREAM_NOTES__GENERATOR="false",
        CLINSTREAM_CDS__STALE_AFTER_H=str(CORPUS_STALE_AFTER_H),
        CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS=os.environ.get("CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS", "10000"),
        CLINSTREAM_LOG_LEVEL="INFO",
    )
    out = log.open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinstream", "up"],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the broker and Milvus Lite die with it
    )
    out.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.findall(r"clinstream ready: .* kafka=(\S+) \(embedded Apache Kafka\)", log.read_text())
        if len(found) == start:
            return proc, found[-1]
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.2)
    raise AssertionError("clinstream up never became ready:\n" + log.read_text()[-3000:])


async def test_power_cut_right_after_the_last_ack_loses_nothing(tmp_path):
    messages = [(f"P{n:05d}", with_control_id(m, f"P{n:05d}")) for n, m in enumerate(load_messages()[:240])]
    mllp_port, log = free_port(), tmp_path / "up.log"
    proc, bootstrap = await asyncio.to_thread(_up, tmp_path, mllp_port, log, 1)
    sender = Sender(mllp_port)
    await sender.run(messages, rate=60.0)
    os.killpg(proc.pid, signal.SIGKILL)  # the last ACK is in: everything goes, at once
    proc.wait(timeout=10)
    cut_at = time.monotonic()

    proc, bootstrap = await asyncio.to_thread(_up, tmp_path, mllp_port, log, 2)
    back_s = time.monotonic() - cut_at
    try:
        await wait_settled(bootstrap, ("normalizer", "indexer", "cds", "notes", "assist"), timeout_s=300)
        await asyncio.sleep(3)  # the indexer seals its last batch by age
        records = await fhir_records(bootstrap)
        inbound = await drain(bootstrap, TOPICS.inbound_hl7v2)
        alerts = [Alert.model_validate_json(r.value) for r in await drain(bootstrap, TOPICS.alerts)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    milvus = MilvusClient(uri=str(tmp_path / "var" / "milvus" / "clinstream.db"))
    try:
        milvus.load_collection("clinical_chunks_v2")
        rows = milvus.query(
            "clinical_chunks_v2", filter='id != ""', output_fields=["resource_id"], limit=16_384
        )
    finally:
        milvus.close()

    accepted = {cid for cid, code in sender.answers.items() if code == "AA"}
    assert len(accepted) == len(messages), Counter(sender.answers.values())
    stored = {Envelope.from_headers(r.headers).source_message_id for r in inbound}
    assert accepted <= stored, f"{len(accepted - stored)} acknowledged messages lost by the broker"
    normalized = {r.envelope.source_message_id for _, _, r in records}
    assert accepted <= normalized, f"{len(accepted - normalized)} acknowledged messages never normalized"
    assert Counter(str(r["resource_id"]) for r in rows) == Counter(expected_chunks(records))
    assert alerts, "the feed raised no alert"
    assert {a.id for a in alerts} == await asyncio.to_thread(single_instance_alerts, records)
    print(
        f"\npower cut: {len(accepted)} messages acknowledged AA before SIGKILL of the whole stack; "
        f"back up {back_s:.1f} s later; all normalized, indexed ({len(rows)} chunks) and decided "
        f"({len(alerts)} alerts)"
    )
