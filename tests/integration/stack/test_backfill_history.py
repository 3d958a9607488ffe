"""Go-live (#30): a patient's history loaded with the backfill client, then a live result.

The corpus' Synthea patient Tanner Ondricka (ten serum creatinine results) as a FHIR Bulk Data
export, its Patient and Observations up to the last creatinine, every date moved so that the
last creatinine was three days ago (decision support reasons over recent history; the values,
codes and references are the corpus'). The history updates decision support's state and pages
no one (older than the stale window). Then one live HL7 v2 ORU, creatinine at 2.3 times that
last value, names the same patient by MRN: the AKI rule fires against the backfilled baseline.
"""

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

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
    ) as stack:
        plan = read([folder])
        assert plan.refused == []
        report = await send_plan(
            plan.units, Target(f"http://127.0.0.1:{stack.http_port}", TOKEN), tmp_path / "c.jsonl"
        )
        assert report.stopped is None
        assert report.outcomes == {"stored": len(plan.units)}
        # decision support has read the history once its normalized records are all in
        await collect(
            stack.bootstrap,
            topics.fhir,
            lambda seen: (
                sum(len(json.loads(r.value)["resources"]) for r in seen if r.key == key.encode()) >= kept
            ),
            timeout=90,
        )
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
    alerts = [Alert.model_validate_json(r.value) for r in seen]
    mine = [a for a in alerts if a.patient_id == key]
    assert [a.rule_id for a in mine] == ["aki-kdigo"]  # the history raised nothing
    assert mine[0].severity in ("warning", "critical")
