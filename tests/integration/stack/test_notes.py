"""Draft notes on the real broker and the real model: an A03 over MLLP becomes a preliminary
DocumentReference PUT to a local FHIR endpoint and an MDM^T02 to a local MLLP listener; a
clinician's edit becomes final and reaches clinician.feedback.v1."""

import asyncio
import time

import httpx
import pytest

from clinstream.models import generator_dir
from connectors.mllp_client import MllpClient
from inference.notes.draft_docs import note_text
from kernel.events import ClinicianFeedback, DraftNote, patient_key
from kernel.generator_session import GenerationConfig, Generator
from kernel.hl7v2.parser import parse_message
from tests.integration.support import TOKEN, collect

MRN = "900123"
A01 = (
    "MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503030415||ADT^A01^ADT_A01|N-A01|P|2.5.1\r"
    "EVN|A01|202503030415\r"
    f"PID|1||{MRN}^^^MERCY^MR||TEST^NORA||19580312|F\r"
    f"PV1|1|I|4W^412^B^MERCY||||||||||||||||V{MRN}^^^MERCY{'|' * 25}202503030415\r"
    "DG1|1||J18.9^Pneumonia, unspecified organism^I10||202503030415|A\r"
)
ORU = (
    "MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|202503050830||ORU^R01^ORU_R01|N-L1|P|2.5.1\r"
    f"PID|1||{MRN}^^^MERCY^MR||TEST^NORA||19580312|F\r"
    f"PV1|1|I|4W^412^B^MERCY||||||||||||||||V{MRN}^^^MERCY\r"
    f"OBR|1|ORD{MRN}|FIL{MRN}^LIS|80048^Basic metabolic panel^C4|||202503050830\r"
    "OBX|1|NM|2160-0^Creatinine^LN||2.4|mg/dL^mg/dL^UCUM|0.6-1.1|H|||F|||202503050830\r"
)
A03 = (
    "MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503070900||ADT^A03^ADT_A03|N-A03|P|2.5.1\r"
    "EVN|A03|202503070900\r"
    f"PID|1||{MRN}^^^MERCY^MR||TEST^NORA||19580312|F\r"
    f"PV1|1|I|4W^412^B^MERCY||||||||||||||||V{MRN}^^^MERCY{'|' * 25}202503030415|202503070900\r"
)


def test_onnx_generator_reproduces_pytorch_greedy_tokens():
    path = generator_dir()
    if not (path / "manifest.json").is_file():
        pytest.fail(f"generator model not built at {path}: run `make models`")
    generator = Generator(path)
    assert generator.check() == []
    # stop sequences and the token budget end a generation where they should
    out = generator.chat(
        [{"role": "user", "content": "Count from 1 to 20."}], GenerationConfig(max_new_tokens=6)
    )
    assert (out.finish, len(out.token_ids)) == ("length", 6)
    sampled = [
        generator.chat(
            [{"role": "user", "content": "Name a fruit."}], GenerationConfig(16, 0.9, 0.9, seed=7)
        ).text
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # seeded sampling is reproducible


async def _wait(predicate, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError("timed out")


async def test_discharge_becomes_a_preliminary_document_at_the_ehr_and_review_makes_it_final(
    start_stack,
    topics,
    ehr,
):
    mllp, mllp_sink, fhir_base, puts = ehr
    patient = patient_key("MERCY", MRN)
    async with start_stack(
        outbound={"mllp_host": "127.0.0.1", "mllp_port": mllp.port, "fhir_base_url": fhir_base},
        cds={"stale_after_h": 24 * 365 * 50},
        notes={"generator": True},
    ) as stack:
        async with MllpClient("127.0.0.1", stack.mllp_port) as client:
            for message in (A01, ORU, A03):
                assert (await client.send(message.encode())).code == "AA"

        def discharge_put():
            return next(
                (
                    body
                    for path, _, body in puts
                    if path.startswith("/fhir/DocumentReference/")
                    and body["type"]["coding"][0]["code"] == "18842-5"
                ),
                None,
            )

        doc = await _wait(discharge_put)
        assert (doc["status"], doc["docStatus"]) == ("current", "preliminary")
        assert doc["subject"]["identifier"]["value"] == MRN  # the EHR's own MRN, not our hash
        text = note_text(doc)
        assert text.startswith("# Discharge summary (DRAFT")
        assert "Creatinine 2.4 mg/dL on 2025-03-05 (abnormal" in text
        assert "Pneumonia" in text
        related = {r["reference"] for r in doc["context"]["related"]}
        assert doc["context"]["encounter"][0]["reference"] in related
        provenance = await _wait(
            lambda: next((b for p, _, b in puts if p == f"/fhir/Provenance/{_prov_id(puts, doc)}"), None)
        )
        assert provenance["target"] == [{"reference": f"DocumentReference/{doc['id']}"}]
        assert {e["what"]["reference"] for e in provenance["entity"]} == related
        assert provenance["agent"][0]["who"]["display"].endswith("SmolLM2-135M-Instruct (bcc81830d10c)")

        mdm = await _wait(
            lambda: next((v for _, v, _, _ in mllp_sink.records if b"MDM^T02" in v and b"18842-5" in v), None)
        )
        txa = parse_message(mdm.decode()).first("TXA")
        assert (txa.value(12), txa.value(17)) == (doc["id"], "IP")

        drafts = await collect(
            stack.bootstrap, topics.drafts, lambda s: any(b"18842-5" in r.value for r in s)
        )
        note = next(DraftNote.model_validate_json(r.value) for r in drafts if b"18842-5" in r.value)
        assert note.patient_id == patient
        assert note.status == "preliminary"
        assert note.sentences >= len(note.removed)

        base = f"http://127.0.0.1:{stack.http_port}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            assert (await http.get(f"/notes/drafts/{doc['id']}")).status_code == 401
            listed = (await http.get("/notes/drafts?status=preliminary", headers=auth)).json()["drafts"]
            assert doc["id"] in {d["id"] for d in listed}
            bad = await http.post(
                f"/notes/drafts/{doc['id']}/review",
                headers=auth,
                json={"decision": "edit", "reviewer": "Dr. Grey"},
            )
            assert bad.status_code == 422  # an edit needs its text
            edited = "Discharge summary. Pneumonia treated; creatinine 2.4 mg/dL on 2025-03-05."
            reviewed = await http.post(
                f"/notes/drafts/{doc['id']}/review",
                headers=auth,
                json={"decision": "edit", "reviewer": "Dr. Grey", "text": edited, "reason": "shortened"},
            )
            assert reviewed.status_code == 200, reviewed.text
            assert reviewed.json()["status"] == "final"
            again = await http.post(
                f"/notes/drafts/{doc['id']}/review",
                headers=auth,
                json={"decision": "accept", "reviewer": "Dr. Grey"},
            )
            assert again.status_code == 409
            missing = await http.post(
                "/notes/drafts", headers=auth, json={"patient_id": "MERCY|000000", "type": "progress-note"}
            )
            assert missing.status_code == 404
            invalid = await http.post(
                "/notes/drafts", headers=auth, json={"patient_id": f"MERCY|{MRN}", "type": "poem"}
            )
            assert invalid.status_code == 422
            progress = await http.post(
                "/notes/drafts", headers=auth, json={"patient_id": f"MERCY|{MRN}", "type": "progress-note"}
            )
            assert progress.status_code == 201, progress.text
            assert progress.json()["documentReference"]["docStatus"] == "preliminary"

        final = await _wait(
            lambda: next(
                (
                    b
                    for p, _, b in puts
                    if p == f"/fhir/DocumentReference/{doc['id']}" and b.get("docStatus") == "final"
                ),
                None,
            )
        )
        assert note_text(final) == edited
        assert final["authenticator"] == {"display": "Dr. Grey"}
        feedback = await collect(stack.bootstrap, topics.feedback, lambda s: len(s) >= 1)
        answer = ClinicianFeedback.model_validate_json(feedback[0].value)
        assert (answer.target, answer.target_id, answer.outcome) == ("draft", doc["id"], "edited")
        assert answer.final_text == edited
        assert answer.draft_text == text
        assert answer.reviewer == "Dr. Grey"
        assert await _wait(lambda: any(b"MDM^T08" in v for _, v, _, _ in mllp_sink.records))


def _prov_id(puts, doc):
    for path, _, body in puts:
        if (
            path.startswith("/fhir/Provenance/")
            and body["target"][0]["reference"] == f"DocumentReference/{doc['id']}"
        ):
            return body["id"]
    return "none-yet"
