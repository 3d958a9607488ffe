"""Two inference instances (decision support, note drafting, assistance) and two indexers in one
consumer group each, on Apache Kafka, 24 patients on 6 partitions. One inference instance is
killed with -9 mid-feed, and started again later on an empty disk (a new machine).

- Alerts: `cds.alerts.v1` (read committed) holds exactly the alerts one uninterrupted instance
  raises on the same normalized records: same ids, none missing, none twice.
- History moves with the partition: each patient's allergy and creatinine baseline arrive
  before the kill; the amoxicillin order and the creatinine rise after it, so for the patients
  of the killed instance the drug–allergy and AKI alerts come from the instance that took their
  partitions over, with the state it restored from the changelog.
- Either instance answers for any patient (current alerts, drafts).

Prints the takeover (kill → the survivor's restore done) and restore figures (the restarted
instance restores every patient's state from the changelogs before it processes a record)."""

import asyncio
import re
import shutil
import time
from collections import Counter, defaultdict

import httpx
import pytest

from kernel.events import TOPICS, Alert, DraftNote, patient_key
from tests.integration.processes import (
    TOKEN,
    Sender,
    deployment,
    drain,
    fhir_records,
    single_instance_alerts,
    wait_settled,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PATIENTS = 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEAD = "MSH|^~\\&|{app}|MERCY|EHR|MERCY|20250303{hhmm}||{type}|{cid}|P|2.5.1\r"
PID = "PID|1||{mrn}^^^MERCY^MR||ZYZZYVA^QUENTIN{p}||19580312|F\r"
ADMIT = (
    "EVN|A01|202503030800\r"
    "PV1|1|I|4W^412^B^MERCY||||||||||||||||V{p:05d}^^^MERCY\r"
    "AL1|1|DA|70618^Penicillin^RXNORM|SV|hives|20100101\r"
)
LAB = (
    "OBR|1|{cid}|F{cid}^LIS|{loinc}^{name}^LN|||20250303{hhmm}\r"
    "OBX|1|NM|{loinc}^{name}^LN||{value}|{unit}^{unit}^UCUM|{range}||||F|||20250303{hhmm}\r"
)
ORDER = (
    "ORC|NW|RX{p:03d}^PHARM|||||||20250303{hhmm}\r"
    "RXE|1^BID^^20250303{hhmm}|723^Amoxicillin 500 MG Oral Capsule^RXNORM|500||mg^mg^UCUM|CAP\r"
)


def _message(p: int, step: str) -> tuple[str, bytes]:
    mrn = f"7{p:05d}"
    cid = f"S{p:02d}-{step}"
    parts = {
        "admit": ("ADT", "ADT^A01^ADT_A01", "0800", ADMIT),
        "baseline": ("LIS", "ORU^R01^ORU_R01", "0900", LAB),
        "order": ("PHARM", "RDE^O11^RDE_O11", "1500", ORDER),
        "rise": ("LIS", "ORU^R01^ORU_R01", "1600", LAB),
        "potassium": ("LIS", "ORU^R01^ORU_R01", "1700", LAB),
    }
    app, kind, hhmm, body = parts[step]
    lab = {
        "baseline": ("2160-0", "Creatinine", "0.8", "mg/dL", "0.6-1.1"),
        "rise": ("2160-0", "Creatinine", "1.4", "mg/dL", "0.6-1.1"),
        "potassium": ("2823-3", "Potassium", "6.6", "mmol/L", "3.5-5.1"),
    }.get(step, ("", "", "", "", ""))
    text = HEAD.format(app=app, hhmm=hhmm, type=kind, cid=cid) + PID.format(mrn=mrn, p=p)
    text += body.format(
        p=p, cid=cid, hhmm=hhmm, loinc=lab[0], name=lab[1], value=lab[2], unit=lab[3], range=lab[4]
    )
    return cid, text.encode()


def _phase(*steps: str) -> list[tuple[str, bytes]]:
    return [_message(p, step) for step in steps for p in range(PATIENTS)]


async def _restores(proc, *, since: int = 0) -> tuple[int, float]:
    """How many partition restores ``proc`` finished, and their seconds (its /metrics)."""
    count = await proc.metric("clinstream_state_restore_seconds_count", topic=TOPICS.cds_state)
    total = await proc.metric("clinstream_state_restore_seconds_sum", topic=TOPICS.cds_state)
    return int(count) - since, total


async def test_two_inference_instances_fail_over_with_their_state(tmp_path):
    layout = {
        "connectors": ["connectors"],
        "normalizer": ["normalizer"],
        "indexer1": ["indexer"],
        "indexer2": ["indexer"],
        "inference1": ["inference"],
        "inference2": ["inference"],
    }
    async with deployment(
        tmp_path,
        layout,
        own_dirs=("inference1", "inference2"),
        CLINSTREAM_KAFKA__PARTITIONS="6",
        CLINSTREAM_NOTES__GENERATOR="false",  # drafts from the chart alone: seconds of CPU saved
    ) as d:
        procs, bootstrap = d.procs, d.broker.bootstrap
        one, two = procs["inference1"], procs["inference2"]
        sender = Sender(procs["connectors"].mllp_port)
        await sender.run(_phase("admit", "baseline"), rate=40.0)
        await wait_settled(bootstrap, ("cds", "notes", "assist"))
        worked = [await p.metric("clinstream_stage_records_total", stage="cds") for p in (one, two)]
        restores_before, _ = await _restores(one)

        two.kill9()  # mid-feed: the orders and the rises are still to come
        killed_at = time.monotonic()
        before_kill = two.log.read_text(errors="replace")
        feed = asyncio.create_task(sender.run(_phase("order", "rise"), rate=40.0))
        while (await _restores(one, since=restores_before))[0] == 0:
            assert time.monotonic() - killed_at < 60, "the survivor never took the partitions over"
            await asyncio.sleep(0.2)
        takeover_s = time.monotonic() - killed_at
        await feed
        await wait_settled(bootstrap, ("cds", "notes", "assist"))

        # The killed instance comes back on a new, empty disk: it restores from the changelogs.
        shutil.rmtree(tmp_path / "inference2")
        two.start()
        await two.wait_ready()
        await sender.run(_phase("potassium"), rate=40.0)
        await wait_settled(bootstrap, ("cds", "notes", "assist", "indexer"))
        restore_line = re.compile(
            rf"state restored: changelog {re.escape(TOPICS.cds_state)} partitions \[([0-9, ]*)\] "
            r"in ([0-9.]+) s \((\d+) keys held\)"
        )
        owned = restore_line.findall(before_kill)  # its last assignment before the kill
        killed_partitions = {int(n) for n in owned[-1][0].split(",") if n.strip()} if owned else set()
        restored = restore_line.findall(two.log.read_text(errors="replace")[len(before_kill) :])
        records = await fhir_records(bootstrap)
        alerts = [Alert.model_validate_json(r.value) for r in await drain(bootstrap, TOPICS.alerts)]
        drafts = [DraftNote.model_validate_json(r.value) for r in await drain(bootstrap, TOPICS.drafts)]
        patient = patient_key("MERCY", "700000")
        # Each instance answers from its replica of the changelogs, current within its reader's
        # lag: asked until both agree (at most 30 s), then compared below.
        answers: dict[str, tuple[list[str], list[str]]] = {}
        for _ in range(60):
            for name in ("inference1", "inference2"):
                async with httpx.AsyncClient(base_url=procs[name].url, headers=AUTH, timeout=30) as http:
                    current = (await http.get(f"/cds/alerts/{patient}")).json()["alerts"]
                    listed = (await http.get("/notes/drafts")).json()["drafts"]
                    answers[name] = (sorted(a["id"] for a in current), sorted(n["id"] for n in listed))
            if answers["inference1"] == answers["inference2"]:
                break
            await asyncio.sleep(0.5)

    assert set(sender.answers.values()) == {"AA"}
    assert all(n > 0 for n in worked), f"both instances decided before the kill: {worked}"

    # Exactly the alerts of one uninterrupted instance: same ids, none missing, none twice.
    counted = Counter(a.id for a in alerts)
    assert [a for a, n in counted.items() if n > 1] == [], "an alert is on the topic twice"
    assert set(counted) == await asyncio.to_thread(single_instance_alerts, records)

    # History from before the kill, used after it by the instance that took the partitions over.
    by_patient: dict[str, set[str]] = defaultdict(set)
    for alert in alerts:
        by_patient[alert.patient_id].add(alert.rule_id)
    partition_of = {r.patient_id: part for part, _, r in records}
    assert len(partition_of) == PATIENTS
    taken_over = [p for p, part in partition_of.items() if part in killed_partitions]
    assert taken_over, f"the killed instance owned no patient's partition ({killed_partitions})"
    for patient_id in partition_of:
        assert {"drug-allergy", "aki-kdigo", "critical-lab"} <= by_patient[patient_id], by_patient[patient_id]

    # Drafts written once each; both instances answer the same for any patient.
    assert [d for d, n in Counter(d.id for d in drafts).items() if n > 1] == []
    assert answers["inference1"] == answers["inference2"]
    assert answers["inference1"][0], "no current alert for the patient"

    [*_, (parts, seconds, keys)] = restored
    print(
        f"\nstateful failover: takeover {takeover_s:.1f} s after kill -9 (session timeout, rebalance, "
        f"restore); the killed instance's partitions {sorted(killed_partitions)} held "
        f"{len(taken_over)} of {PATIENTS} patients. Restarted on an empty disk: the state of "
        f"{keys} patients restored in {float(seconds):.3f} s (partitions [{parts}])"
    )
