"""The data ecosystem against the real stack: the demo feed over MLLP, then agent tools over HTTP
and over MCP (stdio, `clinstream mcp` as its own process) with their AuditEvents on the broker,
and `clinstream export` run twice as a process: same bytes, no identifier of the feed in them."""

import asyncio
import getpass
import json
import os
import re
import sys
import time
from pathlib import Path

import httpx
import jwt
import pyarrow.parquet as pq
import pydicom
import pytest
from mcp import Client, StdioServerParameters

import clinstream
from clinstream.demo import demo_messages
from connectors.mllp_client import MllpClient
from kernel.audit import summary, verify
from kernel.audit_kafka import events_of, read_partitions
from kernel.events import patient_key
from kernel.fhir_models import model_class
from kernel.replay_kafka import read_topic
from tests.conftest import corpora_dir
from tests.fakes import bulk_export
from tests.integration.support import collect

pytestmark = pytest.mark.integration
SECRET = "ecosystem-test-secret-of-32-chars!!"
KEY = "ecosystem-export-key-0123456789"
CLINSTREAM = str(Path(sys.executable).parent / "clinstream")
JANE, RICHARD = patient_key("MERCY", "100001"), patient_key("MERCY", "100002")


@pytest.fixture
async def stack(start_stack):
    async with start_stack(
        http={"api_token": "ecosystem-token", "jwt_hs256_secret": SECRET},
        milvus={"collection": "eco"},
        cds={"stale_after_h": 24 * 365 * 50},  # the demo feed is from March 2025
    ) as s:
        yield s


def agent_token(patients, scope="patient/*.read"):
    claims = {"sub": "test-agent", "exp": int(time.time()) + 600, "scope": scope, "patients": patients}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def feed_identifiers():
    """Names, MRNs, birth dates and street addresses in the demo feed's PID segments."""
    found = set()
    for message in demo_messages():
        for segment in message.decode().split("\r"):
            fields = segment.split("|")
            if fields[0] != "PID":
                continue
            found.add(fields[3].split("^")[0])
            found.update(p for p in fields[5].split("^") if p)
            found.add(fields[7])
            if len(fields) > 11 and fields[11]:
                found.add(fields[11].split("^")[0])
    return {f for f in found if len(f) >= 3}


async def test_agent_tools_and_exports_on_the_live_stack(stack, topics, prefix, tmp_path):
    async with MllpClient("127.0.0.1", stack.mllp_port) as client:
        codes = [(await client.send(m)).code for m in demo_messages()]
    assert codes.count("AA") >= 30
    base = f"http://127.0.0.1:{stack.http_port}"
    jane = {"Authorization": f"Bearer {agent_token([JANE])}"}
    calls = 0
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        deadline = time.monotonic() + 90
        while True:  # until Jane's record is indexed
            r = await http.post("/agent/tools/patient_timeline", json={"patient_id": JANE}, headers=jane)
            calls += 1
            assert r.status_code == 200
            if len(r.json()["results"]) >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        jane_refs = {e["resource_id"] for e in r.json()["results"]}
        assert len(jane_refs) >= 3
        service = {"Authorization": "Bearer ecosystem-token"}
        richard_refs: set[str] = set()
        while not richard_refs and time.monotonic() < deadline:
            richard = await http.get(f"/patients/{RICHARD}/timeline", headers=service)
            richard_refs = {e["resource_id"] for e in richard.json()["entries"]}
            await asyncio.sleep(0.5)
        assert richard_refs
        assert not jane_refs & richard_refs

        r = await http.post(
            "/agent/tools/search_patient_record",
            json={"patient_id": "MERCY|100001", "question": "potassium creatinine results", "k": 10},
            headers=jane,
        )
        calls += 1
        assert r.status_code == 200
        hits = {h["resource_id"] for h in r.json()["results"]}
        assert hits
        assert not hits & richard_refs  # nothing outside the scope, even for a question that fits Richard
        r = await http.post("/agent/tools/patient_timeline", json={"patient_id": RICHARD}, headers=jane)
        calls += 1
        assert r.status_code == 403
        r = await http.post("/agent/tools/active_alerts", json={"patient_id": JANE}, headers=jane)
        calls += 1
        assert r.status_code == 200
        assert isinstance(r.json()["results"], list)
        listing = await http.get("/agent/openapi.json", headers=jane)
        assert "/agent/tools/draft_note" in listing.json()["paths"]

    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(Path.home())),
        "CLINSTREAM_AGENTS__API_URL": base,
        "CLINSTREAM_AGENTS__TOKEN": agent_token([JANE]),
    }
    async with Client(StdioServerParameters(command=CLINSTREAM, args=["mcp"], env=env)) as mcp:
        assert "search_patient_record" in {t.name for t in (await mcp.list_tools()).tools}
        answer = await mcp.call_tool("patient_timeline", {"patient_id": JANE, "limit": 5})
        calls += 1
        assert not answer.is_error
        via_mcp = {e["resource_id"] for e in answer.structured_content["results"]}
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:  # Jane's record may have grown
            now = await http.get(f"/patients/{JANE}/timeline", headers=service)
        assert via_mcp <= jane_refs | {e["resource_id"] for e in now.json()["entries"]}
        assert not via_mcp & richard_refs
        refused = await mcp.call_tool("patient_timeline", {"patient_id": RICHARD})
        calls += 1
        assert refused.is_error

    every = [json.loads(r.value) for r in await read_topic(stack.bootstrap, topics.audit)]
    for event in every:  # the tools' and the API's own (the tools' backend reads are audited too)
        model_class("AuditEvent").model_validate(event)
    audits = [e for e in every if e["source"]["observer"]["display"] == "clinstream agent tools"]
    assert len(audits) == calls
    assert sorted(e["outcome"] for e in audits).count("4") == 2

    # Imaging through the real broker, normalizer and index: pydicom's CT test file.
    ct = (Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm").read_bytes()
    async with httpx.AsyncClient(
        base_url=base, timeout=60, headers={"Authorization": "Bearer ecosystem-token"}
    ) as http:
        posted = await http.post(
            "/dicom/studies?issuer=MERCY", content=ct, headers={"Content-Type": "application/dicom"}
        )
        assert posted.status_code == 200
        imaging: list[dict] = []
        deadline = time.monotonic() + 60
        while not imaging and time.monotonic() < deadline:
            timeline = await http.get(f"/patients/{patient_key('MERCY', '1CT1')}/timeline?type=ImagingStudy")
            imaging = timeline.json()["entries"]
            await asyncio.sleep(0.5)
        assert imaging
        assert imaging[0]["text"].startswith("Imaging:")

    await collect(stack.bootstrap, topics.alerts, lambda seen: len(seen) >= 1, timeout=60)
    await asyncio.to_thread(_exports, stack.bootstrap, prefix, tmp_path)

    # Each export read every patient: one AuditEvent per patient and export, before it was
    # written, under the user who ran it; the whole audit topic's chains hold.
    records = await read_partitions(stack.bootstrap, topics.audit)
    exported = [s for s in map(summary, events_of(records)) if s["action"].startswith("clinstream export")]
    assert {s["patient"] for s in exported if "pretraining (shifted)" in s["action"]} >= {JANE, RICHARD}
    assert {s["principal"] for s in exported} == {f"cli:{getpass.getuser()}"}
    assert any("(safe-harbor)" in s["action"] for s in exported)
    assert verify((p, o, v) for p, o, _, v in records).breaks == []

    await _backfill(stack, tmp_path)


def _cli(*args):
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")}
    return subprocess.run([CLINSTREAM, *args], env=env, capture_output=True, text=True, timeout=300)


async def _backfill(stack, tmp_path):
    """History through `clinstream backfill`: a Bulk Data export (one NDJSON file per type,
    made from a Synthea bundle) and a Synthea bundle over HTTP, the demo archive over MLLP;
    resumed, nothing is sent again; run again whole, the patient's record is the same."""
    synthea = sorted(p for p in (corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json") if "_" in p.name)
    export = bulk_export(synthea[:1], tmp_path / "export")
    patient = next(json.loads(line)["id"] for line in (export / "Patient.ndjson").read_text().splitlines())
    base = f"http://127.0.0.1:{stack.http_port}"
    args = [
        "backfill", str(export), str(synthea[1]), str(Path(clinstream.__file__).with_name("demo_feed.hl7")),
        "--to", base, "--token", "ecosystem-token", "--mllp", f"127.0.0.1:{stack.mllp_port}",
        "--rate", "0", "--checkpoint", str(tmp_path / "backfill.jsonl"),
    ]  # fmt: skip
    first = await asyncio.to_thread(_cli, *args)
    # the demo archive's message 10 has no patient identifier: named, and the exit status says so
    assert first.returncode == 1, first.stderr[-3000:]
    assert "demo_feed.hl7#10: HL7 error 102" in first.stderr
    assert first.stderr.count("not readable:") == 1
    assert "stored" in first.stdout
    assert "refused" not in first.stdout  # the deployment took every unit it was sent
    service = {"Authorization": "Bearer ecosystem-token"}

    async def entries():
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            found = await http.get(f"/patients/{patient}/timeline?limit=1000", headers=service)
        return {e["resource_id"] for e in found.json()["entries"]}

    deadline, seen = time.monotonic() + 90, set()
    while time.monotonic() < deadline:
        now = await entries()
        if now and now == seen:
            break  # indexed, and no longer growing
        seen = now
        await asyncio.sleep(3)
    assert len(seen) > 20

    resumed = await asyncio.to_thread(_cli, *args, "--resume")
    assert resumed.stdout.strip() == "nothing sent", resumed.stderr[-2000:]
    again = await asyncio.to_thread(_cli, *args)
    assert "stored" in again.stdout, again.stderr[-2000:]
    await asyncio.sleep(5)
    assert await entries() == seen  # the same ids: nothing new, nothing lost


def _export(kind, out, bootstrap, prefix, *extra, key=KEY):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CLINSTREAM_")},
        "CLINSTREAM_KAFKA__BOOTSTRAP": bootstrap,
        **({"CLINSTREAM_EXPORTS__DEID_KEY": key} if key else {}),
    }
    import subprocess

    done = subprocess.run(
        [CLINSTREAM, "export", kind, "--out", str(out), "--topic-prefix", prefix, *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((out / "dataset_card.json").read_text())


def _exports(bootstrap, prefix, tmp_path):
    first = _export("pretraining", tmp_path / "a", bootstrap, prefix)
    again = _export("pretraining", tmp_path / "b", bootstrap, prefix)
    assert first == again
    for name in ("pretraining.jsonl", "pretraining.parquet", "DATASET_CARD.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["patients"] >= 5
    assert first["rows"] == len(pq.read_table(tmp_path / "a" / "pretraining.parquet"))
    instructions = _export("instructions", tmp_path / "i", bootstrap, prefix)
    assert instructions["tasks"].get("alert-rationale", 0) >= 1
    written = "".join(
        (tmp_path / d / f).read_text()
        for d in ("a", "i")
        for f in os.listdir(tmp_path / d)
        if not f.endswith(".parquet")
    )
    leaked = [
        v
        for v in feed_identifiers()
        if re.search(rf"(?<![\w.]){re.escape(v)}(?![\w])", written, re.IGNORECASE)
    ]
    assert leaked == []
    for key in (JANE, RICHARD):  # the stream's patient keys are computable from an MRN
        assert key not in written

    strict = _export("pretraining", tmp_path / "s", bootstrap, prefix, "--deid", "safe-harbor", key=None)
    assert strict["deidentification"]["mode"] == "safe-harbor"
    assert strict["deidentification"]["key_id"] is None
    assert strict["rows"] == first["rows"]
    text = (tmp_path / "s" / "pretraining.jsonl").read_text()
    assert not re.search(r"\b\d{4}-\d{2}-\d{2}", text)  # years only
