"""`clinstream backfill`'s plan on the corpora: Synthea bundles as they are, a Bulk Data export
(written here from Synthea bundles, one NDJSON file per type as `$export` writes it) as PUT
transactions per patient, the Microsoft FHIR server's import files with their invalid lines
refused, HL7 v2 archives one message each; order by patient then time; a resumable checkpoint."""

import json

import pytest

from connectors.backfill import Unit, checkpoint_line, load_checkpoint, read
from connectors.backfill_client import Pace
from tests.conftest import corpora_dir
from tests.fakes import bulk_export

SYNTHEA = sorted(p for p in (corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json") if "_" in p.name)


def test_synthea_bundles_go_as_they_are_one_unit_a_patient():
    plan = read(SYNTHEA[:3])
    assert plan.refused == []
    assert [u.kind for u in plan.units] == ["fhir"] * 3
    assert len({u.patient for u in plan.units}) == 3
    by_source = sorted(plan.units, key=lambda u: u.source)
    assert [u.payload for u in by_source] == [p.read_bytes() for p in sorted(SYNTHEA[:3])]


def test_a_bulk_export_becomes_put_transactions_per_patient_patient_first_oldest_first(tmp_path):
    export = bulk_export(SYNTHEA[:2], tmp_path / "export")
    plan = read([export], max_resources=50)
    patients = {u.patient for u in plan.units} - {""}
    assert len(patients) == 2
    shared = [u for u in plan.units if u.patient == ""]
    assert shared == plan.units[: len(shared)]  # Organizations and Practitioners first
    kinds = {e["resource"]["resourceType"] for u in shared for e in json.loads(u.payload)["entry"]}
    assert kinds == {"Organization", "Practitioner"}
    for patient in patients:
        units = [u for u in plan.units if u.patient == patient]
        resources = [e["resource"] for u in units for e in json.loads(u.payload)["entry"]]
        assert resources[0]["resourceType"] == "Patient"
        assert all(len(json.loads(u.payload)["entry"]) <= 50 for u in units)
        entry = json.loads(units[0].payload)["entry"][1]
        assert entry["request"] == {
            "method": "PUT",
            "url": f"{entry['resource']['resourceType']}/{entry['resource']['id']}",
        }
        whens = [u.when for u in units]
        assert whens == sorted(whens)  # a patient's history in the order it happened
    # the same export gives the same units, named the same: a checkpoint holds across runs
    assert [u.id for u in read([export], max_resources=50).units] == [u.id for u in plan.units]
    assert plan.refused == []


def test_the_import_templates_invalid_lines_are_refused_with_their_place():
    folder = corpora_dir() / "fhir" / "microsoft-fhir-server" / "Normative"
    plan = read([folder / "Import-InvalidPatient.ndjson", folder / "Import-Patient.ndjson"])
    reasons = {r.reason for r in plan.refused}
    assert any("not a JSON line" == r for r in reasons)
    assert any("without a valid id" in r for r in reasons)  # "##PatientID##" is a template, not an id
    assert all(":" in r.source for r in plan.refused)  # file:line
    assert plan.units == []


def test_hl7_archives_one_unit_a_message_ordered_by_patient_then_time():
    files = sorted((corpora_dir() / "hl7v2").rglob("*.hl7"))[:60]
    plan = read(files)
    assert plan.units
    assert {u.kind for u in plan.units} == {"hl7"}
    keys = [(u.patient, u.when) for u in plan.units]
    assert keys == sorted(keys)
    assert all("|" in u.patient for u in plan.units)
    assert all(r.reason.startswith("HL7 error") for r in plan.refused)


def test_a_checkpoint_resumes_after_the_last_unit_written_even_cut_short(tmp_path):
    units = [Unit("hl7", "A|1", f"2024010{n}", f"MSH|{n}".encode(), f"f#{n}") for n in range(3)]
    path = tmp_path / "checkpoint.jsonl"
    path.write_text(checkpoint_line(units[0], "stored") + checkpoint_line(units[1], "refused: AR")[:-7])
    done = load_checkpoint(path)
    assert done == {units[0].id}  # the half-written line's unit is sent again
    assert load_checkpoint(tmp_path / "none.jsonl") == set()


async def test_pace_spaces_units_by_the_rate():
    now = [100.0]
    slept = []

    async def fake_sleep(s):
        slept.append(s)
        now[0] += s

    pace = Pace(4.0, clock=lambda: now[0])
    import asyncio

    real = asyncio.sleep
    asyncio.sleep = fake_sleep
    try:
        for _ in range(5):
            await pace.wait()
    finally:
        asyncio.sleep = real
    assert slept == pytest.approx([0.25, 0.25, 0.25, 0.25])


async def test_a_deployment_that_says_wait_is_waited_for_without_using_up_the_tries(tmp_path):
    """A real HTTP server that answers 429 (its live records are late) twice, then takes the
    unit; another unit it answers 503 every time: the run stops there, checkpoint intact."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from clinstream.http import make_server
    from connectors.backfill_client import Target, send_plan

    seen = []

    async def fhir(request):
        body = await request.body()
        seen.append((body, request.headers.get("x-clinstream-lane")))
        if body == b"down":
            return JSONResponse({}, status_code=503)
        if len(seen) <= 2:
            return JSONResponse({}, status_code=429, headers={"Retry-After": "0"})
        return JSONResponse({"resourceType": "Bundle"})

    server = make_server(Starlette(routes=[Route("/fhir", fhir, methods=["POST"])]), "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    units = [Unit("fhir", "p1", "2020", b"up", "a.json"), Unit("fhir", "p2", "2021", b"down", "b.json")]
    try:
        report = await send_plan(units, Target(base, "t", attempts=2), tmp_path / "c.jsonl")
    finally:
        server.should_exit = True
        await task
    assert report.throttled == 2
    assert report.outcomes == {"stored": 1}
    assert report.stopped is not None
    assert "b.json" in report.stopped
    assert [lane for _, lane in seen] == ["backfill"] * len(seen)
    assert load_checkpoint(tmp_path / "c.jsonl") == {units[0].id}
