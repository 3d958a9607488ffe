"""Go-live (#30): a patient's history loaded with the backfill client, then a live result.

The corpus' Synthea patient Tanner Ondricka (ten serum creatinine results) as a FHIR Bulk Data
export, its Patient and Observations up to the last creatinine, every date moved so that the
last creatinine was three days ago (decision support reasons over recent history; the values,
codes and references are the corpus'). The history updates decision support's state and pages
no one (older than the stale window). An HL7 v2 archive of one more old result goes in through
the deployment's backfill MLLP listener. Everything the backfill sent travels in the backfill
lane. Then one live HL7 v2 ORU, creatinine at 2.3 times the last value, names the same patient
by MRN: the AKI rule fires against the backfilled baseline, and its record is live.
"""

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from connectors.backfill import read
from connectors.backfill_client import Target, send_plan
from connectors.mllp_client import MllpClient
from kernel.events import Alert, patient_key
from tests.conftest import corpora_dir
from tests.fakes import bulk_export
from tests.integration.support import collect

pytestmark = pytest.mark.integration
TOKEN = "history-token"
AUTHORITY = "SYN"
CREATININE = ("2160-0", "38483-4")  # LOINC serum/plasma creatinine (Synthea codes the second)
BUNDLE = "Tanner_Ondricka_43d11566-de89-4702-bf50-fff2978bd15d.json"
_DATE = re.compile(r'"(\d{4}-\d{2}-\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?"')


def _history(tmp_path, now):
    """The export, cut at the last creatinine and moved to end three days ago; (folder, MRN,
    last creatinine in mg/dL)."""
    export = bulk_export([corpora_dir() / "fhir" / "smart-synthea-r4" / BUNDLE], tmp_path / "raw")
    patient = json.loads((export / "Patient.ndjson").read_text().splitlines()[0])
    mrn = next(
        i["value"]
        for i in patient["identifier"]
        if i.get("type", {}).get("coding", [{}])[0].get("code") == "MR"
    )
    observations = [json.loads(line) for line in (export / "Observation.ndjson").read_text().splitlines()]
    creatinine = [o for o in observations if any(c["code"] in CREATININE for c in o["code"]["coding"])]
    last = max(creatinine, key=lambda o: o["effectiveDateTime"])
    cut = last["effectiveDateTime"]
    kept = [o for o in observations if o.get("effectiveDateTime", "") <= cut]
    shift = (now - timedelta(days=3)) - datetime.fromisoformat(cut)

    def moved(resource):
        def one(m):
            day = datetime.fromisoformat(m[1]).replace(tzinfo=UTC)
            if m[2] is None:
                return f'"{(day + shift).date().isoformat()}"'
            return f'"{(datetime.fromisoformat(m[1] + m[2]) + shift).isoformat()}"'

        return json.loads(_DATE.sub(one, json.dumps(resource)))

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text(json.dumps(moved(patient)) + "\n")
    (folder / "Observation.ndjson").write_text("".join(json.dumps(moved(o)) + "\n" for o in kept))
    return folder, mrn, Decimal(str(last["valueQuantity"]["value"])), len(kept)


ORU = (
    "MSH|^~\\&|LIS|SYN_LAB|EHR|SYN|{ts}||ORU^R01^ORU_R01|{ctrl}|P|2.5.1\r"
    "PID|1||{mrn}^^^{authority}^MR||ONDRICKA^TANNER||19890101|M\r"
    "OBR|1|O{ctrl}|F{ctrl}^LIS|80048^Basic metabolic panel^C4|||{ts}\r"
    "OBX|1|NM|2160-0^Creatinine^LN||{value}|mg/dL^mg/dL^UCUM|0.7-1.3|H|||F|||{ts}\r"
)


async def test_a_live_creatinine_alerts_against_a_backfilled_baseline_and_history_pages_no_one(
    start_stack, topics, tmp_path
):
    now = datetime.now(UTC)
    folder, mrn, last, kept = _history(tmp_path, now)
    key = patient_key(AUTHORITY, mrn)
    async with start_stack(
        http={"api_token": TOKEN},
        normalizer={"patient_authorities": {"http://hospital.smarthealthit.org": AUTHORITY}},
        notes={"enabled": False},
        dashboard={"enabled": False},
        milvus={"collection": "history"},
        mllp={"backfill_port": 0},
    ) as stack:
        old = (now - timedelta(days=4)).strftime("%Y%m%d%H%M%S+0000")  # the same value, a day earlier
        archive = ORU.format(ts=old, ctrl="OLD1", mrn=mrn, authority=AUTHORITY, value=last)
        (folder / "results.hl7").write_text(archive)
        plan = read([folder])
        assert plan.refused == []
        assert stack.mllp_backfill_port is not None
        target = Target(
            f"http://127.0.0.1:{stack.http_port}", TOKEN, mllp=("127.0.0.1", stack.mllp_backfill_port)
        )
        report = await send_plan(plan.units, target, tmp_path / "c.jsonl")
        assert report.stopped is None
        assert report.outcomes == {"stored": len(plan.units)}
        # decision support has read the history once its normalized records are all in
        history = await collect(
            stack.bootstrap,
            topics.fhir,
            lambda seen: (
                sum(len(json.loads(r.value)["resources"]) for r in seen if r.key == key.encode()) >= kept + 2
            ),
            timeout=90,
        )
        assert {dict(r.headers).get("lane") for r in history if r.key == key.encode()} == {b"backfill"}
        value = (last * Decimal("2.3")).quantize(Decimal("0.01"))
        ts = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        async with MllpClient("127.0.0.1", stack.mllp_port) as client:
            ack = await client.send(
                ORU.format(ts=ts, ctrl="LIVE1", mrn=mrn, authority=AUTHORITY, value=value).encode()
            )
        assert ack.code == "AA"
        seen = await collect(
            stack.bootstrap,
            topics.alerts,
            lambda records: any(Alert.model_validate_json(r.value).rule_id == "aki-kdigo" for r in records),
            timeout=90,
        )
        records = await collect(
            stack.bootstrap, topics.fhir, lambda got: any(b"LIVE1" in dict(r.headers).values() for r in got)
        )
        await _a_local_code_is_counted_suggested_mapped_and_its_history_re_run(stack, topics, mrn, key)
    [live] = [r for r in records if dict(r.headers).get("source_message_id") == b"LIVE1"]
    assert "lane" not in dict(live.headers)
    alerts = [Alert.model_validate_json(r.value) for r in seen]
    mine = [a for a in alerts if a.patient_id == key]
    assert [a.rule_id for a in mine] == ["aki-kdigo"]  # the history raised nothing
    assert mine[0].severity in ("warning", "critical")


LOCAL_K = (
    "MSH|^~\\&|LIS|SYN_LAB|EHR|SYN|{ts}||ORU^R01^ORU_R01|{ctrl}|P|2.5.1\r"
    "PID|1||{mrn}^^^{authority}^MR||ONDRICKA^TANNER||19890101|M\r"
    "OBR|1|O{ctrl}|F{ctrl}^LIS|80048^Basic metabolic panel^C4|||{ts}\r"
    "OBX|1|NM|K^Potassium^L||6.9|mmol/L^mmol/L^UCUM|3.5-5.1|HH|||F|||{ts}\r"
)


async def _a_local_code_is_counted_suggested_mapped_and_its_history_re_run(stack, topics, mrn, key):
    """A potassium of 6.9 under the lab's local code K pages no one (no rule knows K); the
    mapping assistant counts it and suggests LOINC 2823-3; once a person confirms that, with a
    re-run, decision support reads the same result again and raises the critical alert."""
    ts = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    async with MllpClient("127.0.0.1", stack.mllp_port) as client:
        ack = await client.send(LOCAL_K.format(ts=ts, ctrl="LOCALK1", mrn=mrn, authority=AUTHORITY).encode())
    assert ack.code == "AA"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.http_port}", timeout=60) as http:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            listed = (await http.get("/terminology/unmapped", headers=auth)).json()["codes"]
            found = [c for c in listed if c["code"] == "K"]
            if found or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.5)
        [k] = found
        assert (k["count"], k["units"], k["low"], k["high"]) == (1, {"mmol/L": 1}, "6.9", "6.9")
        assert (k["suggestions"][0]["loinc"], k["suggestions"][0]["analyte"]) == ("2823-3", "potassium")
        alerts = await collect(stack.bootstrap, topics.alerts, lambda _: True, timeout=5)
        assert not [a for a in alerts if Alert.model_validate_json(a.value).rule_id == "critical-lab"]
        body = {"sender": k["sender"], "system": k["system"], "code": "K", "loinc": "2823-3", "rerun": True}
        confirmed = await http.post("/terminology/mappings", headers=auth, json=body)
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["mapping"]["current"]["version"] == 1
        seen = await collect(
            stack.bootstrap,
            topics.alerts,
            lambda got: any(Alert.model_validate_json(r.value).rule_id == "critical-lab" for r in got),
            timeout=90,
        )
        for _ in range(100):  # the re-run reads on to the topic's end after its one record
            [mapping] = (await http.get("/terminology/mappings", headers=auth)).json()["mappings"]
            if mapping["rerun"]["state"] != "running":
                break
            await asyncio.sleep(0.2)
        assert mapping["rerun"]["state"] == "done"
        assert mapping["rerun"]["sent"] == 1
        assert "K" not in {
            c["code"] for c in (await http.get("/terminology/unmapped", headers=auth)).json()["codes"]
        }
    critical = [a for a in (Alert.model_validate_json(r.value) for r in seen) if a.rule_id == "critical-lab"]
    assert [a.patient_id for a in critical] == [key]
