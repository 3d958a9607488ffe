"""The rule pipeline on real Synthea patients and on a scripted ward stay: state → rules → hygiene."""

import re
import sqlite3
from dataclasses import replace

import pytest

from bench.synthea_feed import synthea_feed
from inference.cds.rules import RuleSet, process, ruleset_from
from inference.cds.state import PatientState
from inference.cds.state_store import SqliteStateStore
from kernel.settings import CdsSettings
from tests.conftest import corpora_dir
from tests.unit.inference.cds.fixtures import T0, hours, obs, record, vitals

SYNTHEA = sorted((corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json"))
RULES = RuleSet()


def _replay(rules):
    alerts = []
    for path in SYNTHEA:
        for visits in synthea_feed(path, received_at=T0):
            state = None
            values = {f"{r['resourceType']}/{r['id']}": r for v in visits for r in v.record.resources}
            for visit in visits:
                outcome = process(state, visit.record, rules, now=visit.at or T0)
                state = outcome.state
                alerts += [(a, values) for a in outcome.alerts]
    return alerts


def test_synthea_patients_with_default_limits_raise_only_medication_alerts():
    # Their labs sit inside every default critical limit and their vitals have no red score; a
    # few of their medication lists hold pairs the interaction table lists, and one patient takes
    # naproxen with an eGFR below 30.
    raised = sorted({(a.rule_id, a.summary.split(":")[0]) for a, _ in _replay(RULES)})
    assert raised == [
        ("drug-interaction", "Interaction amlodipine + simvastatin"),
        ("drug-interaction", "Interaction digoxin + verapamil"),
        ("drug-interaction", "Interaction naproxen + sertraline"),
        ("renal-dosing", "Naproxen with eGFR 26.186265168833234 mL/min"),
    ]


def test_synthea_alerts_are_explained_and_quote_only_the_patients_own_values():
    # Tight limits so that the real values of these patients cross them.
    tight = ruleset_from(CdsSettings(critical_limits={"potassium": {"high": 5.0}, "glucose": {"high": 150}}))
    alerts = _replay(tight)
    assert len(alerts) >= 3
    for alert, values in alerts:
        assert len(alert.summary) <= 140
        assert alert.citation
        assert alert.thresholds
        assert alert.inputs
        for item in alert.inputs:
            if item.ref is None:
                continue
            source = values[item.ref]  # every input is one of the patient's own resources
            if source["resourceType"] == "MedicationRequest":
                assert item.value == source["medicationCodeableConcept"]["text"]
                continue
            numbers = [
                c.get("valueQuantity", {}).get("value") for c in [source, *source.get("component", [])]
            ]
            shown = re.match(r"-?[\d.]+", item.value)
            assert shown is None or any(float(shown.group()) == n for n in numbers if n is not None), item


def test_a_ward_stay_deteriorates_escalates_and_recovers():
    rules = ruleset_from(CdsSettings())
    state = None
    raised = []
    script = [
        (0, {}),
        (1, {"rr": 25}),  # single red: warning
        (2, {"rr": 25}),  # same band within 12 h: held
        (3, {"rr": 25, "hr": 111, "temp": 38.5}),  # 3 + 2 + 1 = 6: band 2, SIRS too
        (4, {"rr": 25, "hr": 111, "temp": 38.5, "sbp": 95, "acvpu": "Voice"}),  # 3+2+1+2+3: high, qSOFA 3
        (5, {}),
    ]
    for n, (hour, values) in enumerate(script):
        at = T0 + hours(hour)
        resources = vitals(at=at, **values)
        outcome = process(state, record(*resources, message_id=str(n)), rules, now=at)
        state = outcome.state
        raised.append(sorted((a.rule_id, a.severity) for a in outcome.alerts))
    assert raised == [
        [],
        [("news2", "warning")],
        [],
        [("news2", "warning"), ("sepsis-sirs", "info")],
        [("news2", "critical"), ("sepsis-qsofa", "warning")],  # SIRS still 3 of 4: held
        [],
    ]


def test_redelivered_record_changes_nothing():
    first = process(None, record(obs("2823-3", 6.8, "mmol/L")), RULES, now=T0)
    again = process(
        first.state,
        record(*[obs("2823-3", 6.8, "mmol/L", oid=first.alerts[0].evidence[0][12:])]),
        RULES,
        now=T0,
    )
    assert again.alerts == []
    assert again.state == first.state
    assert [h.reason for h in again.held] == ["duplicate"]


def test_records_without_observations_evaluate_nothing_but_update_state():
    condition = {"resourceType": "Condition", "id": "c1", "code": {"text": "COPD"}}
    outcome = process(None, record(condition), RULES, now=T0)
    assert outcome.alerts == []
    assert "Condition/c1" in outcome.state.conditions


@pytest.mark.parametrize("path", [":memory:", "file"])
def test_state_store_round_trip(tmp_path, path):
    target = tmp_path / "cds" / "state.sqlite" if path == "file" else path
    store = SqliteStateStore(target, cache_size=1)
    outcome = process(None, record(obs("2823-3", 6.8, "mmol/L")), RULES, now=T0)
    store.save(outcome.state)
    store.save(PatientState(patient_id="p2"))  # evicts p1 from the cache
    assert store.load("p1") == outcome.state
    assert store.load("nobody") is None
    assert store.patients() == 2
    store.close()
    if path == "file":
        reopened = SqliteStateStore(target)
        assert reopened.load("p1") == outcome.state
        reopened.close()


def test_state_store_batches_read_memory_first_and_write_all_or_nothing(tmp_path):
    target = tmp_path / "state.sqlite"
    store = SqliteStateStore(target, cache_size=2)
    states = [PatientState(patient_id=f"p{i}", gender="female") for i in range(3)]
    store.save_many(states)  # p0 is evicted from memory, p1 and p2 stay
    assert store.cached("p0") is None
    assert store.load_many(["p2", "p0", "nobody", "p0"]) == {"p2": states[2], "p0": states[0]}
    assert store.load_many([]) == {}

    changed = [PatientState(patient_id="p0", gender="male"), PatientState(patient_id="p9")]
    entries = store.changes(changed, {"p0": 1, "p9": 2})
    assert [(e.key, e.partition) for e in entries] == [("p0", 1), ("p9", 2)]
    unwritable = [entries[0], replace(entries[1], offset=None)]  # NOT NULL: the row cannot be written
    with pytest.raises(sqlite3.IntegrityError):
        store.save_many(changed, unwritable)
    store.close()
    reopened = SqliteStateStore(target)
    assert reopened.load("p0") == states[0]  # the first row of the failed batch was rolled back
    assert reopened.load("p9") is None
    many = reopened.load_many([f"p{i}" for i in range(3)] + [f"x{i}" for i in range(1200)])
    assert sorted(many) == ["p0", "p1", "p2"]
    reopened.close()


def test_state_store_memory_fast_paths(tmp_path):
    target = tmp_path / "state.sqlite"
    store = SqliteStateStore(target, cache_size=1)
    assert store.cached("p1") is None
    store.save(PatientState(patient_id="p1"))
    assert store.cached("p1") == PatientState(patient_id="p1")
    store.save(PatientState(patient_id="p2"))  # evicts p1: memory says nothing, the file still has it
    assert store.cached("p1") is None
    assert store.load("p1") == PatientState(patient_id="p1")
    assert not store.remembered(["card-1"])
    assert store.remembered([])
    store.remember_cards("p1", [("card-1", "critical-lab")])
    assert store.remembered(["card-1"])
    assert not store.remembered(["card-1", "card-2"])
    store.close()
    reopened = SqliteStateStore(target)
    assert not reopened.remembered(["card-1"])  # a new process writes again (INSERT OR IGNORE)
    assert reopened.card_owner("card-1") == ("p1", "critical-lab")
    reopened.close()
