"""The rule pipeline on real Synthea patients and on a scripted ward stay: state → rules → hygiene."""

import json
import re
from datetime import datetime

import pytest

from inference.rules import RuleSet, process, ruleset_from
from inference.state import PatientState
from inference.state_store import SqliteStateStore
from stream.events import FhirInbound
from stream.fhir_input import normalize_fhir
from stream.settings import CdsSettings
from tests.conftest import corpora_dir
from tests.unit.cds_helpers import T0, hours, obs, record, vitals

SYNTHEA = sorted((corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json"))
RULES = RuleSet()


def _synthea_records(path):
    bundle = json.loads(path.read_text(encoding="utf-8-sig"))
    entries = [e for e in bundle["entry"] if "resource" in e]
    inbound = FhirInbound(
        interaction="transaction",
        resources=[e["resource"] for e in entries],
        full_urls=[e.get("fullUrl") for e in entries],
    )
    return normalize_fhir(inbound)


def _by_encounter(resources):
    """A patient's resources as a live feed would send them: one record per encounter, in time order."""

    def when(r):
        return str(r.get("effectiveDateTime") or r.get("authoredOn") or r.get("onsetDateTime") or "")

    groups = {}
    for res in resources:
        ref = (res.get("encounter") or res.get("context") or {}).get("reference", "")
        groups.setdefault(ref, []).append(res)
    return sorted(groups.values(), key=lambda g: min((when(r) for r in g if when(r)), default=""))


def _replay(rules):
    alerts = []
    for path in SYNTHEA:
        for group in _synthea_records(path):
            state = None
            values = {
                f"Observation/{r['id']}": r for r in group.resources if r.get("resourceType") == "Observation"
            }
            for n, resources in enumerate(_by_encounter(group.resources)):
                rec = record(*resources, patient=group.patient_id, message_id=str(n))
                times = [
                    datetime.fromisoformat(r["effectiveDateTime"])
                    for r in resources
                    if "effectiveDateTime" in r
                ]
                outcome = process(state, rec, rules, now=max(times, default=T0))
                state = outcome.state
                alerts += [(a, values) for a in outcome.alerts]
    return alerts


def test_synthea_patients_with_default_limits_raise_nothing():
    # Their labs sit inside every default critical limit and their vitals have no red score.
    assert _replay(RULES) == []


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
            source = values[item.ref]  # every input is one of the patient's own observations
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
