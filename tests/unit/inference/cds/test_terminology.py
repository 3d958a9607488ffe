"""The local code mapping assistant's pure core (`inference.cds.terminology`), its store, and
decision support reading a mapping confirmed while it runs (FastStream's in-memory broker)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from hypothesis import HealthCheck, given, settings

from inference.cds.app import register_cds
from inference.cds.rules import RuleSet
from inference.cds.state_store import SqliteStateStore
from inference.cds.terminology import (
    ANY_SENDER,
    LOINC,
    LOINC_CODE,
    MIN_SCORE,
    LocalCodes,
    MappingError,
    Sighting,
    confirm,
    merge,
    sightings_in,
    suggest,
    with_mapping,
)
from inference.cds.terminology_store import TerminologyStore
from kernel.changelog_store import Entry
from kernel.errors import Hl7Error
from kernel.events import Alert, Envelope, FhirRecord, Topics
from stream.normalize import normalize_hl7
from tests.fakes import collected
from tests.unit.stream.fixtures import mutated

T0 = datetime(2025, 1, 1, tzinfo=UTC)
LAB = "LIS^MERCY_LAB"
LOCAL = "urn:clinstream:codesystem:L"
TOPICS = Topics()


def envelope(sender=LAB, at=T0):
    return Envelope(
        source_system=sender, source_message_id="L1", content_hash="h", received_at=at, trace_id="t1"
    )


def local_obs(oid, code, value, unit, display="", system=LOCAL):
    coding = {"system": system, "code": code} | ({"display": display} if display else {})
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [coding]},
        "valueQuantity": {"value": value, "unit": unit},
    }


def loinc_obs(oid, code, value, unit):
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": {"value": value, "unit": unit},
    }


def sighting(code, display, unit="", low=None, high=None):
    values = {"low": Decimal(low), "high": Decimal(high), "unit_of_range": unit} if low is not None else {}
    return Sighting(
        sender=LAB, code=code, display=display, count=3, units={unit: 3} if unit else {}, **values
    )


def test_sightings_count_only_codes_no_rule_knows_per_sender():
    record = FhirRecord(
        envelope=envelope(),
        patient_id="p1",
        resources=[
            loinc_obs("o1", "2823-3", 4.1, "mmol/L"),
            local_obs("o2", "K", 6.9, "mmol/L", "Potassium"),
            local_obs("o3", "K", 3.2, "mmol/L", "Potassium"),
            local_obs("o4", "NA", 139, "mmol/L"),
            {"resourceType": "Patient", "id": "p1"},
        ],
    )
    seen = {s.code: s for s in sightings_in(record, {f"{LOCAL}|NA": "sodium"})}
    assert set(seen) == {"K"}
    k = seen["K"]
    assert (k.sender, k.system, k.count, k.units) == (LAB, LOCAL, 2, {"mmol/L": 2})
    assert (k.low, k.high, k.display) == (Decimal("3.2"), Decimal("6.9"), "Potassium")


def test_merge_adds_counts_and_keeps_the_range_of_the_most_used_unit():
    a = Sighting(sender=LAB, code="CR", count=2, units={"umol/L": 2}, low=60, high=90, unit_of_range="umol/L")
    b = Sighting(sender=LAB, code="CR", count=1, units={"mg/dL": 1}, low=1, high=1, unit_of_range="mg/dL")
    c = Sighting(
        sender=LAB, code="CR", count=1, units={"umol/L": 1}, low=400, high=400, unit_of_range="umol/L"
    )
    total = merge(merge(a, b), c)
    assert (total.count, total.units) == (4, {"umol/L": 3, "mg/dL": 1})
    assert (total.low, total.high, total.unit_of_range) == (60, 400, "umol/L")


@pytest.mark.parametrize(
    ("code", "display", "unit", "low", "high", "loinc", "analyte"),
    [
        ("K", "", "mmol/L", "3.1", "6.8", "2823-3", "potassium"),
        ("CREAT", "Creatinine, serum", "umol/L", "60", "400", "2160-0", "creatinine"),
        ("HGB", "", "g/dL", "7", "15", "718-7", "hemoglobin"),
        ("GLU", "Glucose random", "mmol/L", "3", "25", "2345-7", "glucose"),
        ("LAC", "Lactate (venous)", "mmol/L", "0.8", "9", "2524-7", "lactate"),
        ("111", "TotalProtein", "g/dL", "6", "7.5", "2885-2", None),
        ("ALT", "", "U/L", "10", "300", "1742-6", None),
    ],
)
def test_the_first_suggestion_is_the_analyte_the_name_units_and_values_say(
    code, display, unit, low, high, loinc, analyte
):
    [first, *_] = suggest(sighting(code, display, unit, low, high))
    assert (first.loinc, first.analyte) == (loinc, analyte)
    assert first.reasons[0].startswith("name:")


def test_units_and_impossible_values_count_against_a_candidate():
    fits = suggest(sighting("K", "Potassium", "mmol/L", "3.1", "6.8"))[0]
    wrong_unit = suggest(sighting("K", "Potassium", "mg/dL", "3.1", "6.8"))[0]
    impossible = suggest(sighting("K", "Potassium", "mmol/L", "130", "150"))[0]
    assert fits.score > wrong_unit.score
    assert fits.score > impossible.score
    assert any("impossible" in r for r in impossible.reasons)
    assert any("does not fit" in r for r in wrong_unit.reasons)


def test_a_code_whose_name_says_nothing_gets_no_suggestion():
    assert suggest(sighting("3DHISTECH_SLD", "3DHISTECH Digital Slide")) == []
    assert suggest(sighting("1234", "")) == []


def test_each_confirmation_is_a_new_version_that_keeps_the_earlier_ones():
    first = confirm(None, sender=LAB, system=LOCAL, code="K", loinc="2823-3", by="ana", at=T0)
    assert (first.current.version, first.current.analyte, first.history) == (1, "potassium", [])
    second = confirm(
        first, sender=LAB, system=LOCAL, code="K", loinc="6298-4", by="ben", at=T0 + timedelta(1)
    )
    assert (second.current.version, second.current.by) == (2, "ben")
    assert [v.loinc for v in second.history] == ["2823-3"]
    unknown = confirm(None, sender=LAB, system=LOCAL, code="X", loinc="1742-6", by="ana", at=T0)
    assert unknown.current.analyte is None  # a LOINC code no rule reads: kept, read by no rule


@pytest.mark.parametrize(
    ("loinc", "analyte", "message"),
    [
        ("potassium", None, "LOINC code"),
        ("2823-3", "sodium", "is potassium"),
        ("2823-3", "kalium", "unknown"),
    ],
)
def test_a_mapping_that_cannot_be_right_is_refused(loinc, analyte, message):
    with pytest.raises(MappingError, match=message):
        confirm(None, sender=LAB, system=LOCAL, code="K", loinc=loinc, analyte=analyte, by="ana", at=T0)


def test_a_senders_own_mapping_comes_before_one_for_every_sender_and_the_configuration():
    codes = LocalCodes({f"{LOCAL}|K": "sodium"})
    assert codes.for_sender(LAB) == {f"{LOCAL}|K": "sodium"}
    everyone = confirm(None, sender=ANY_SENDER, system=LOCAL, code="K", loinc="2823-3", by="a", at=T0)
    codes.replace([everyone])
    assert codes.for_sender("OTHER^LAB")[f"{LOCAL}|K"] == "potassium"
    own = confirm(None, sender=LAB, system=LOCAL, code="K", loinc="2951-2", by="a", at=T0)
    codes.replace([everyone, own])
    assert codes.for_sender(LAB)[f"{LOCAL}|K"] == "sodium"
    assert codes.for_sender("OTHER^LAB")[f"{LOCAL}|K"] == "potassium"


def test_a_rerun_record_gets_the_loinc_coding_in_the_backfill_lane_and_other_senders_none():
    mapping = confirm(None, sender=LAB, system=LOCAL, code="K", loinc="2823-3", by="a", at=T0)
    record = FhirRecord(envelope=envelope(), patient_id="p1", resources=[local_obs("o1", "K", 6.9, "mmol/L")])
    mapped = with_mapping(record, mapping)
    assert mapped is not None
    assert mapped.envelope.lane == "backfill"
    assert mapped.resources[0]["code"]["coding"][-1] == {
        "system": LOINC,
        "code": "2823-3",
        "userSelected": False,
        "display": "Potassium",
    }
    assert mapped.resources[0]["id"] == "o1"
    assert with_mapping(record.model_copy(update={"envelope": envelope("OTHER^LAB")}), mapping) is None
    assert with_mapping(mapped, mapping) is None  # coded with LOINC already: nothing to re-run


def test_the_store_adds_a_batch_to_what_its_partition_counted_before():
    store = TerminologyStore(":memory:")
    one = sighting("K", "Potassium", "mmol/L", "3", "4")
    [entry] = store.changes({2: [one, one]})
    assert Sighting.model_validate_json(entry.value).count == 6
    store.unmapped.apply([Entry(entry.key, entry.value, 2, 10)], own=True)
    [again] = store.changes({2: [one]})
    assert Sighting.model_validate_json(again.value).count == 9
    store.unmapped.apply([Entry(again.key, again.value, 2, 11)], own=True)
    [other] = store.changes({3: [one]})
    store.unmapped.apply([Entry(other.key, other.value, 3, 5)], own=True)
    [total] = store.unmapped_codes()
    assert total.count == 12  # both partitions


async def test_decision_support_reads_a_mapping_confirmed_while_it_runs():
    broker = KafkaBroker()
    store = SqliteStateStore(":memory:")
    codes = TerminologyStore(":memory:")
    register_cds(broker, TOPICS, RuleSet(), store, clock=lambda: T0, terminology=codes)
    alerts = collected(broker, TOPICS.alerts)

    def record(oid):
        return FhirRecord(
            envelope=envelope(), patient_id="p1", resources=[local_obs(oid, "K", 6.9, "mmol/L")]
        )

    async with TestKafkaBroker(broker) as br:
        await br.publish(record("o1").model_dump_json().encode(), topic=TOPICS.fhir)
        assert alerts == []
        [unknown] = codes.unmapped_codes()
        assert (unknown.code, unknown.count) == ("K", 1)
        mapping = confirm(None, sender=LAB, system=LOCAL, code="K", loinc="2823-3", by="ana", at=T0)
        codes.mappings.apply([Entry(mapping.key, mapping.model_dump_json().encode(), 0, 1)])
        codes.refresh()
        await br.publish(record("o2").model_dump_json().encode(), topic=TOPICS.fhir)
    assert [Alert.model_validate_json(a).rule_id for a in alerts] == ["critical-lab"]
    assert codes.unmapped_codes() == []  # mapped now: off the list


def test_a_code_confirmed_as_a_loinc_code_no_rule_reads_leaves_the_unmapped_list():
    store = TerminologyStore(":memory:")
    alt = sighting("ALT", "Alanine aminotransferase", "U/L", "10", "300")
    for other in ("ALT", "AST"):
        [entry] = store.changes({0: [alt.model_copy(update={"code": other})]})
        store.unmapped.apply([Entry(entry.key, entry.value, 0, 1)], own=True)
    mapping = confirm(None, sender=ANY_SENDER, system="", code="ALT", loinc="1742-6", by="ana", at=T0)
    assert mapping.current.analyte is None
    store.mappings.apply([Entry(mapping.key, mapping.model_dump_json().encode(), 0, 1)])
    store.refresh()
    assert [s.code for s in store.unmapped_codes()] == ["AST"]


async def test_a_record_that_breaks_the_contract_is_dead_lettered_not_counted_and_the_batch_goes_on():
    broker = KafkaBroker()
    codes = TerminologyStore(":memory:")
    register_cds(broker, TOPICS, RuleSet(), SqliteStateStore(":memory:"), clock=lambda: T0, terminology=codes)
    dead = collected(broker, TOPICS.deadletter)
    broken = {"resourceType": "Observation", "id": "o9", "status": "final", "code": "K"}
    bad = FhirRecord(envelope=envelope(), patient_id="p1", resources=[broken])
    good = FhirRecord(envelope=envelope(), patient_id="p2", resources=[local_obs("o1", "NA", 139, "mmol/L")])
    async with TestKafkaBroker(broker) as br:
        await br.publish(bad.model_dump_json().encode(), topic=TOPICS.fhir)
        await br.publish(good.model_dump_json().encode(), topic=TOPICS.fhir)
    assert len(dead) == 1
    assert [s.code for s in codes.unmapped_codes()] == ["NA"]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_corpus_results_recast_as_local_codes_are_counted_and_suggested_without_fault(text):
    """Corpus messages, mutated as real feeds vary them, their LOINC codes recast as the lab's
    local codes (``^LN`` → ``^L``): every Observation is counted once under its sender, and
    every suggestion is a LOINC code above the floor, at most three, best first."""
    try:
        result = normalize_hl7(text.replace("^LN", "^L"), tz=UTC)
    except Hl7Error:
        return
    record = FhirRecord(envelope=envelope(result.sender), patient_id="p", resources=result.resources)
    seen = sightings_in(record, {})
    observations = [
        r
        for r in record.resources
        if r["resourceType"] == "Observation"
        and any(c.get("code") for c in r.get("code", {}).get("coding", []))
        and not any(c.get("system") == LOINC for c in r.get("code", {}).get("coding", []))
    ]
    assert sum(s.count for s in seen) == len(observations)
    assert {s.sender for s in seen} <= {result.sender}
    for one in seen:
        offered = suggest(one)
        assert len(offered) <= 3
        assert all(LOINC_CODE.match(s.loinc) and s.score >= MIN_SCORE for s in offered)
        assert [s.score for s in offered] == sorted((s.score for s in offered), reverse=True)
