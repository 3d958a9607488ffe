"""De-identification and the datasets: planted identifiers never survive, exports reproduce."""

import base64
import json
import re
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from exports.card import key_id
from exports.datasets import KINDS, Filters, Sources, build, charts
from exports.deid import Deidentifier
from exports.files import write_export
from kernel.events import (
    Alert,
    AlertInput,
    ClinicianFeedback,
    DraftNote,
    Envelope,
    FhirRecord,
)
from stream.fhir_input import normalize_fhir
from stream.normalize import normalize_hl7
from stream.validation import validate
from tests.conftest import corpora_dir
from tests.unit.stream.fixtures import synthea_inbound

SYNTHEA = sorted(
    p for p in (corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json") if "Information" not in p.name
)
KEY = b"a-test-key-of-32-bytes-----------"
UTC_ZONE = ZoneInfo("UTC")

# Every planted identifier, as written anywhere it was planted (and its variants).
PLANTED = [
    "Plantedname",
    "Johnathan",
    "Plantedmom",
    "98765432",
    "123-45-6789",
    "123456789",
    "2175550199",
    "555-0199",
    "jplanted",
    "example.org",
    "Wallaby",
    "Springfield",
    "62704",
    "10.20.30.40",
    "77AB9911",
    "5544332211",
    "D1234-56789",
    "1930-02-14",
    "19300214",
    "02/14/1930",
    "February 14, 1930",
    "2024-03-05",  # event dates are shifted
    "94 year",
]
NOTE = (
    "Johnathan Plantedname (MRN 98765432), a 94 year old man, DOB 02/14/1930, admitted 2024-03-05. "
    "Lives at 42 Wallaby Way, Springfield IL 62704; call (217) 555-0199 or jplanted@example.org. "
    "Portal http://portal.example.org/p/98765432 from 10.20.30.40. SSN 123-45-6789. "
    "Pacemaker serial SN-77AB9911. Mother Mary Plantedmom at bedside. Potassium 6.2 mmol/L. "
    "Born February 14, 1930; hospital account 5544332211, driver licence D1234-56789."
)
PID = (
    "PID|1||98765432^^^MERCY^MR||PLANTEDNAME^JOHNATHAN^Q||19300214|M|||42 WALLABY WAY^^SPRINGFIELD^IL^62704"
    "||(217)555-0199^PRN^PH^jplanted@example.org|||||5544332211|123-45-6789|D1234-56789^IL"
)
MESSAGES = [
    "\r".join(
        [
            "MSH|^~\\&|EPIC|MERCY|CS|CS|20240305101500||ADT^A01|LEAK-1|P|2.5.1",
            "EVN|A01|20240305101500",
            PID,
            "NK1|1|PLANTEDMOM^MARY|MTH|42 WALLABY WAY^^SPRINGFIELD^IL^62704|(217)555-0199",
            "PV1|1|I|4W^401^1^MERCY||||1234^DOCNAME^GREGORY|||MED||||||||V5544332211|||||||||||||||||||||||||"
            "20240305101500",
        ]
    ),
    "\r".join(
        [
            "MSH|^~\\&|LAB|MERCY|CS|CS|20240305120000||ORU^R01|LEAK-2|P|2.5.1",
            PID,
            "OBR|1|ORD1|FIL1|2823-3^Potassium^LN|||20240305113000",
            "OBX|1|NM|2823-3^Potassium^LN||6.2|mmol/L|3.5-5.1|HH|||F|||20240305113000",
            f"NTE|1||{NOTE}",
            f"OBX|2|TX|11506-3^Progress note^LN||{NOTE}||||||F|||20240305113000",
        ]
    ),
]


def _records():
    out = []
    for n, text in enumerate(MESSAGES):
        result = normalize_hl7(text, tz=UTC_ZONE)
        envelope = Envelope(
            source_system="EPIC^MERCY",
            source_message_id=f"LEAK-{n}",
            content_hash="0" * 64,
            received_at=datetime(2024, 3, 5, tzinfo=UTC),
            trace_id="t",
        )
        out.append(FhirRecord(envelope=envelope, patient_id=result.patient_id, resources=result.resources))
    return out


def _sources():
    records = _records()
    pid = records[0].patient_id
    chart = charts(records)[pid]
    report = next(ref for ref in chart.resources if ref.startswith("DiagnosticReport/"))
    potassium = next(
        ref
        for ref, r in chart.resources.items()
        if r["resourceType"] == "Observation" and "6.2" in json.dumps(r)
    )
    text = f"# Lab interpretation\n\n- {NOTE} [1]\n\n## Sources\n[1] {potassium}: Potassium 6.2 mmol/L\n"
    document = {
        "resourceType": "DocumentReference",
        "id": "d" * 32,
        "status": "current",
        "docStatus": "preliminary",
        "subject": {"reference": f"Patient/{pid}"},
        "content": [
            {"attachment": {"contentType": "text/markdown", "data": base64.b64encode(text.encode()).decode()}}
        ],
    }
    at = datetime(2024, 3, 5, 12, tzinfo=UTC)
    draft = DraftNote(
        id="d" * 32,
        patient_id=pid,
        kind="lab-interpretation",
        anchor=report,
        status="preliminary",
        document=document,
        provenance={"resourceType": "Provenance"},
        citations=(potassium,),
        sentences=1,
        created=at,
    )
    feedback = ClinicianFeedback(
        id="f" * 32,
        patient_id=pid,
        target="draft",
        target_id=draft.id,
        outcome="edited",
        draft_text=text,
        final_text=text.replace("Potassium 6.2", "Critical potassium 6.2")
        + "\nDr Gregory Docname, pager 217-555-0199",
        reviewer="Gregory Docname",
        at=at,
        channel="api",
        principal="api-token",
    )
    alert = Alert(
        id="a" * 32,
        patient_id=pid,
        rule_id="critical-value",
        rule_version="1",
        severity="critical",
        summary="Critical potassium 6.2 mmol/L",
        detail=f"Potassium 6.2 mmol/L at 2024-03-05 11:30 for MRN 98765432 ({NOTE})",
        evidence=(potassium,),
        citation="local policy",
        raised_at=at,
        trace_id="t",
        inputs=(AlertInput(label="Potassium", value="6.2 mmol/L", at=at, ref=potassium),),
    )
    return Sources(records, [draft], [feedback], [alert])


@pytest.fixture(scope="module")
def sources():
    return _sources()


def _leaks(text):
    lowered = text.lower()
    return [p for p in PLANTED if p.lower() in lowered]


def test_the_planted_identifiers_are_in_the_input(sources):
    """The leak test means something only if every planted value reached the normalized data."""
    raw = json.dumps([r.model_dump(mode="json") for r in sources.records])
    raw += json.dumps(
        [sources.feedback[0].model_dump(mode="json"), sources.alerts[0].model_dump(mode="json")]
    )
    decoded = " ".join(
        base64.b64decode(a["data"]).decode()
        for r in sources.records
        for res in r.resources
        for c in res.get("content", []) + res.get("presentedForm", [])
        for a in [c.get("attachment", c)]
        if a.get("data")
    )
    missing = [
        p
        for p in PLANTED
        if p.lower() not in (raw + decoded).lower() and p not in ("123456789", "2175550199", "19300214")
    ]
    assert missing == []


@pytest.mark.parametrize("mode", ["shifted", "safe-harbor"])
@pytest.mark.parametrize("kind", KINDS)
def test_no_planted_identifier_survives_any_export(sources, kind, mode, tmp_path):
    rows = build(kind, sources, Deidentifier(KEY if mode == "shifted" else None, mode))
    assert rows, f"{kind} is empty: nothing was tested"
    body = write_export(
        tmp_path, kind, rows, parquet=True, filters={}, source={}, key_id=key_id(KEY), mode=mode
    )
    written = "".join(p.read_text() for p in tmp_path.iterdir() if p.suffix in (".jsonl", ".json", ".md"))
    import pyarrow.parquet as pq

    written += json.dumps(pq.read_table(tmp_path / f"{kind}.parquet").to_pylist())
    assert _leaks(written) == []
    assert sources.records[0].patient_id not in written  # the stream's key is computable from the MRN
    assert body["rows"] == len(rows)


def test_clinical_content_survives(sources):
    deid = Deidentifier(KEY)
    [doc] = build("pretraining", sources, deid)
    assert "Potassium 6.2 mmol/L" in doc["text"]
    assert "critical high" in doc["text"]
    assert "[NAME]" in doc["text"]
    assert "[PHONE]" in doc["text"]
    assert "[SSN]" in doc["text"]
    assert "90+ year old" in doc["text"]
    offset = deid.offset_days(sources.records[0].patient_id)
    shifted = date(2024, 3, 5).toordinal() - offset
    assert date.fromordinal(shifted).isoformat() in doc["text"]
    tasks = {r["task"] for r in build("instructions", sources, deid)}
    assert tasks == {"lab-interpretation", "alert-rationale"}
    [pref] = build("preferences", sources, deid)
    assert "Critical potassium 6.2" in pref["chosen"]
    assert "Critical potassium" not in pref["rejected"]


def test_edited_drafts_are_note_instructions(sources):
    rows = build(
        "instructions", Sources(sources.records, sources.drafts, sources.feedback, ()), Deidentifier(KEY)
    )
    [note] = [r for r in rows if r["source"] == "clinician edited draft"] or [None]
    # the draft cites an Observation in the chart: its line is the context, the edit the output
    assert note is not None
    assert note["input"].startswith("Potassium 6.2 mmol/L")
    assert "Critical potassium 6.2" in note["output"]


def test_exports_reproduce_byte_for_byte_and_keys_change_pseudonyms(sources, tmp_path):
    cards = []
    for name in ("one", "two"):
        rows = build("pretraining", sources, Deidentifier(KEY))
        cards.append(
            write_export(
                tmp_path / name,
                "pretraining",
                rows,
                parquet=True,
                filters={},
                source={"t": {"0": 3}},
                key_id="k",
            )
        )
    assert cards[0] == cards[1]
    for f in ("pretraining.jsonl", "pretraining.parquet", "dataset_card.json", "DATASET_CARD.md"):
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    other = build("pretraining", sources, Deidentifier(b"another-key-of-enough-length"))
    assert other[0]["id"] != build("pretraining", sources, Deidentifier(KEY))[0]["id"]


def test_deidentified_resources_stay_valid_fhir(sources):
    deid = Deidentifier(KEY)
    for record in sources.records:
        s = deid.patient(record.patient_id, record.resources)
        for resource in record.resources:
            clean = s.resource(resource)
            if clean is not None:
                validate(clean)


def _synthea_identifiers(patient):
    values = {patient["birthDate"]}
    for name in patient.get("name", []):
        values.add(name["family"])
        values.update(name.get("given", []))
    values.update(i["value"] for i in patient.get("identifier", []))
    values.update(t["value"] for t in patient.get("telecom", []))
    for a in patient.get("address", []):
        values.update([a.get("city", ""), a.get("postalCode", ""), *a.get("line", [])])
    for ext in patient.get("extension", []):
        if ext["url"].endswith("mothersMaidenName"):
            values.update(ext["valueString"].split())
    return {v for v in values if v and len(v) >= 4}


@pytest.mark.parametrize("path", SYNTHEA[:8], ids=lambda p: p.name[:20])
def test_synthea_patients_leave_no_identifier_in_pretraining(path):
    inbound = synthea_inbound(path)
    envelope = Envelope(
        source_system="synthea",
        source_message_id="1",
        content_hash="0",
        received_at=datetime.now(UTC),
        trace_id="t",
    )
    records = [
        FhirRecord(envelope=envelope, patient_id=g.patient_id, resources=g.resources)
        for g in normalize_fhir(inbound)
    ]
    patient = next(r for r in inbound.resources if r["resourceType"] == "Patient")
    rows = build("pretraining", Sources(records), Deidentifier(KEY))
    text = json.dumps(rows)
    # whole tokens: a ZIP code such as 02035 may be digits inside a measured value (205.88420470502035)
    found = [
        v
        for v in _synthea_identifiers(patient)
        if re.search(rf"(?<![\w.]){re.escape(v)}(?![\w])", text, re.IGNORECASE)
    ]
    assert found == []
    assert rows[0]["events"] > 10


def test_filters_select_by_type_and_date(sources):
    deid = Deidentifier(KEY)
    [only] = build("pretraining", sources, deid, Filters(types=frozenset({"Observation"})))
    assert "Potassium" in only["text"]
    assert "Encounter" not in only["text"]
    assert build("pretraining", sources, deid, Filters(since=date(2025, 1, 1))) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call 617-555-1234 now", "call [PHONE] now"),
        ("email a.b@x.org", "email [EMAIL]"),
        ("ip 192.168.1.20", "ip [IP]"),
        ("acct# 00123456", "acct# [ID]"),
        ("Medical Record Number", "Medical Record Number"),  # a code's display is not an identifier
        ("Boston MA 02115", "Boston MA [ZIP]"),
        ("a 101-year-old woman", "a 90+-year-old woman"),
        ("a 45-year-old woman", "a 45-year-old woman"),
        ("seen with her daughter Ann Lee-Smith today", "seen with her daughter [NAME] today"),
        ("Dr. Okafor reviewed", "Dr. [NAME] reviewed"),
        ("platelets 250 x10^9/L, creatinine 1.2", "platelets 250 x10^9/L, creatinine 1.2"),
    ],
)
def test_free_text_rules(text, expected):
    assert Deidentifier(KEY).patient("p", ()).text(text) == expected


def test_the_dataset_card_does_not_call_a_date_shifted_export_safe_harbor(sources, tmp_path):
    """Safe Harbor keeps no date element but the year and no linkable code: an export whose
    dates keep day and month (shifted) and whose pseudonyms link a patient is not it."""
    rows = build("pretraining", sources, Deidentifier(KEY))
    card = write_export(tmp_path, "pretraining", rows, parquet=False, filters={}, source={}, key_id="k")
    shifted = [r for r in rows if re.search(r"\d{4}-\d{2}-\d{2}", json.dumps(r))]
    assert shifted  # day and month survive, shifted
    method = card["deidentification"]["method"]
    assert "NOT HIPAA Safe Harbor" in method
    assert "limited data set" in method
    assert "NOT HIPAA Safe Harbor" in (tmp_path / "DATASET_CARD.md").read_text()


_FINER_THAN_A_YEAR = re.compile(
    r"\b\d{4}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+\d{1,2}\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("kind", KINDS)
def test_a_safe_harbor_export_keeps_years_only_and_links_nothing_across_exports(sources, kind, tmp_path):
    first = build(kind, sources, Deidentifier(None, "safe-harbor"))
    second = build(kind, sources, Deidentifier(None, "safe-harbor"))
    assert first
    text = json.dumps(first)
    assert _FINER_THAN_A_YEAR.findall(text) == []
    assert _leaks(text) == []
    patients = {str(r.get("patient") or r["id"]) for r in first}
    assert patients.isdisjoint({str(r.get("patient") or r["id"]) for r in second})  # random per export
    shifted = json.dumps(build(kind, sources, Deidentifier(KEY)))
    assert _FINER_THAN_A_YEAR.findall(shifted)  # the check finds dates where they are
    card = write_export(
        tmp_path, kind, first, parquet=False, filters={}, source={}, key_id=None, mode="safe-harbor"
    )
    assert card["deidentification"]["mode"] == "safe-harbor"
    assert card["deidentification"]["key_id"] is None
    assert card["deidentification"]["method"].startswith("HIPAA Safe Harbor")
    assert "mode safe-harbor" in (tmp_path / "DATASET_CARD.md").read_text()


def test_safe_harbor_gives_a_patient_over_89_no_birth_year():
    old = {"resourceType": "Patient", "id": "p", "birthDate": "1930-02-14"}
    visit = {"resourceType": "Encounter", "id": "e", "period": {"start": "2024-03-01T10:00:00Z"}}
    strict = Deidentifier(None, "safe-harbor").patient("p", [old, visit])
    assert "birthDate" not in strict.resource(old)
    assert strict.resource(visit)["period"]["start"] == "2024"
    assert (
        strict.text("seen on March 3, 2021 and 2021-03-04, aged 94 years")
        == "seen on 2021 and 2021, aged 90+ years"
    )
    young = {"resourceType": "Patient", "id": "q", "birthDate": "1980-06-01"}
    assert (
        Deidentifier(None, "safe-harbor").patient("q", [young, visit]).resource(young)["birthDate"] == "1980"
    )
    with pytest.raises(ValueError, match="key"):
        Deidentifier(None)  # the shifted mode needs its key
