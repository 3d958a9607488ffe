"""Retrieval quality on two labelled sets: recall@5 and MRR for dense, BM25 and hybrid search.

**Synthea.**
The 42 Synthea R4 bundles in ../shared/corpora/fhir/smart-synthea-r4/ go through the FHIR
input normalizer and the indexer's chunking into a Milvus Lite collection, embedded with
the real ONNX model. The labelled set is written here by the team: 28 question templates,
each with the rule that says which of a patient's resources answer it (a LOINC code, a
resource type, a condition, vaccine, drug or procedure name), asked of the first three
patients (by file name) that have an answer: 84 questions. 20 templates are paraphrases
("does the patient smoke" for "Tobacco smoking status"), 8 are names as typed. A resource
answers a question whatever its date; ordering by date is the timeline's job, not the ranking's.

**HL7 v2** (the second set, written for #28 before measuring): the HL7 v2 corpus messages the
normalizer converts, each patient's messages normalized into one record (75 patients), and 18
templates of what a clinician asks of a feed's record ("white cell count", "drug allergies",
"insurance coverage"), each with its rule over the resources' codes, names or type; asked of
up to three patients each that have an answer (36 questions from the 14 templates that have one).

recall@5 = answers in the top 5 / min(answers, 5); MRR = mean of 1 / rank of the first answer
(0 when none is in the top 10).

Usage: python bench/retrieval.py [--corpora ../shared/corpora] [--per-template 3] [--precision fp32|int8]
                               [--sets synthea hl7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.normalize import corpus_messages  # noqa: E402
from clinstream.models import embedding_dir  # noqa: E402
from indexer.chunking import Chunk, resource_chunks  # noqa: E402
from indexer.milvus_store import MilvusStore, connect  # noqa: E402
from indexer.ort_session import Embedder  # noqa: E402
from indexer.query import ContextualQuery  # noqa: E402
from kernel.events import FhirInbound  # noqa: E402
from stream.fhir_input import normalize_fhir  # noqa: E402
from stream.normalize import normalize_hl7  # noqa: E402

Resource = dict[str, Any]


def _loinc(code: str) -> Callable[[Resource], bool]:
    def rule(r: Resource) -> bool:
        return r["resourceType"] == "Observation" and any(
            c.get("code") == code for c in r.get("code", {}).get("coding", [])
        )

    return rule


def _named(kind: str, key: str, word: str) -> Callable[[Resource], bool]:
    def rule(r: Resource) -> bool:
        if r["resourceType"] != kind:
            return False
        concept = r.get(key, {})
        names = [concept.get("text", "")] + [c.get("display", "") for c in concept.get("coding", [])]
        return any(word in n.lower() for n in names)

    return rule


def _kind(kind: str) -> Callable[[Resource], bool]:
    return lambda r: r["resourceType"] == kind


TEMPLATES: list[tuple[str, Callable[[Resource], bool]]] = [
    ("latest HbA1c", _loinc("4548-4")),
    ("serum creatinine kidney function", _loinc("38483-4")),
    ("estimated GFR", _loinc("33914-3")),
    ("LDL cholesterol", _loinc("18262-6")),
    ("blood pressure reading", _loinc("55284-4")),
    ("body weight", _loinc("29463-7")),
    ("body mass index", _loinc("39156-5")),
    ("does the patient smoke", _loinc("72166-2")),
    ("potassium level", _loinc("6298-4")),
    ("blood glucose", _loinc("2339-0")),
    ("hemoglobin", _loinc("718-7")),
    ("platelet count", _loinc("777-3")),
    ("last echocardiogram ejection fraction", _loinc("10230-1")),
    ("pain score", _loinc("72514-3")),
    ("current medications", _kind("MedicationRequest")),
    ("known allergies", _kind("AllergyIntolerance")),
    ("flu shot", _named("Immunization", "vaccineCode", "influenza")),
    ("diabetes diagnosis", _named("Condition", "code", "diabetes")),
    ("high blood pressure diagnosis", _named("Condition", "code", "hypertension")),
    ("procedures performed", _kind("Procedure")),
    # Names as a clinician types them: the words are in the record.
    ("hydrochlorothiazide", _named("MedicationRequest", "medicationCodeableConcept", "hydrochlorothiazide")),
    ("acetaminophen", _named("MedicationRequest", "medicationCodeableConcept", "acetaminophen")),
    ("clopidogrel", _named("MedicationRequest", "medicationCodeableConcept", "clopidogrel")),
    ("epinephrine auto-injector", _named("MedicationRequest", "medicationCodeableConcept", "epinephrine")),
    ("anemia", _named("Condition", "code", "anemia")),
    ("prediabetes", _named("Condition", "code", "prediabetes")),
    ("colonoscopy", _named("Procedure", "code", "colonoscopy")),
    ("throat culture", _named("Procedure", "code", "throat culture")),
]


NAMED = 8  # the last templates: names as typed


def _observation(codes: tuple[str, ...], words: tuple[str, ...] = ()) -> Callable[[Resource], bool]:
    """An Observation coded with one of ``codes`` (any system) or named with one of ``words``."""

    def rule(r: Resource) -> bool:
        if r["resourceType"] != "Observation":
            return False
        concept = r.get("code", {})
        if any(c.get("code") in codes for c in concept.get("coding", [])):
            return True
        names = [concept.get("text", "")] + [c.get("display", "") for c in concept.get("coding", [])]
        return any(w in n.lower() for n in names for w in words)

    return rule


# The second labelled set (written before measuring, #28): the HL7 v2 corpus' patients, every
# message of a patient normalized into one record, asked what a clinician asks of a feed's
# record. The rules read the resources' own codes and names, never the index or the embeddings.
HL7_TEMPLATES: list[tuple[str, Callable[[Resource], bool]]] = [
    ("white cell count", _observation(("6690-2", "26464-8", "804-5"), ("wbc", "leukocytes", "white blood"))),
    ("hemoglobin level", _observation(("718-7", "30313-1"), ("hemoglobin", "hgb"))),
    ("sodium", _observation(("2951-2", "2947-0"), ("sodium",))),
    ("potassium result", _observation(("2823-3", "6298-4"), ("potassium",))),
    ("kidney function creatinine", _observation(("2160-0", "38483-4"), ("creatinine",))),
    ("blood sugar", _observation(("2345-7", "2339-0"), ("glucose",))),
    ("heart rate", _observation(("8867-4",), ("heart rate", "pulse"))),
    ("body temperature", _observation(("8310-5",), ("temperature",))),
    ("body weight", _observation(("29463-7", "3141-9"), ("weight",))),
    ("vaccines given", _kind("Immunization")),
    ("drug allergies", _kind("AllergyIntolerance")),
    ("problem list diagnoses", _kind("Condition")),
    ("hospital visit", _kind("Encounter")),
    ("medication orders", _kind("MedicationRequest")),
    ("clinical notes and reports", _kind("DocumentReference")),
    ("insurance coverage", _kind("Coverage")),
    ("scheduled appointment", _kind("Appointment")),
    ("lab results report", _kind("DiagnosticReport")),
]


def _mean(rows: list[tuple[bool, float, float]], at: int) -> float:
    return statistics.mean(r[at] for r in rows) if rows else 0.0


@dataclass(frozen=True)
class Question:
    text: str
    patient: str
    answers: frozenset[str]


def synthea_records(corpora: Path) -> dict[str, list[Resource]]:
    """Patient id → normalized resources, per bundle file in name order."""
    out: dict[str, list[Resource]] = {}
    for path in sorted((corpora / "fhir" / "smart-synthea-r4").glob("*.json")):
        bundle = json.loads(path.read_text())
        entries = bundle.get("entry", [])
        inbound = FhirInbound(
            interaction="transaction",
            resources=[e["resource"] for e in entries],
            full_urls=[e.get("fullUrl") for e in entries],
        )
        for group in normalize_fhir(inbound):
            if group.patient_id:
                out.setdefault(group.patient_id, []).extend(group.resources)
    return out


def hl7_records(corpora: Path) -> dict[str, list[Resource]]:
    """Patient id → the resources every HL7 v2 corpus message about them normalizes to (a later
    message's version of a resource replaces the earlier one, as in the index)."""
    out: dict[str, dict[str, Resource]] = {}
    for text in corpus_messages(corpora):
        result = normalize_hl7(text, tz=ZoneInfo("UTC"))
        for r in result.resources:
            out.setdefault(result.patient_id, {})[f"{r['resourceType']}/{r['id']}"] = r
    return {p: list(rs.values()) for p, rs in out.items()}


def labelled_set(
    records: dict[str, list[Resource]],
    per_template: int,
    templates: list[tuple[str, Callable[[Resource], bool]]] = TEMPLATES,
) -> list[Question]:
    questions = []
    for text, rule in templates:
        found = 0
        for patient, resources in records.items():
            answers = frozenset(f"{r['resourceType']}/{r['id']}" for r in resources if rule(r))
            if answers:
                questions.append(Question(text, patient, answers))
                found += 1
                if found == per_template:
                    break
    return questions


def scores(ranked: list[str], answers: frozenset[str]) -> tuple[float, float]:
    top5 = set(ranked[:5])
    recall = len(top5 & answers) / min(len(answers), 5)
    rank = next((i for i, rid in enumerate(ranked[:10], 1) if rid in answers), None)
    return recall, (1 / rank if rank else 0.0)


def evaluate(
    name: str,
    records: dict[str, list[Resource]],
    templates: list[tuple[str, Callable[[Resource], bool]]],
    named: set[str],
    embedder: Embedder,
    per_template: int,
    folder: Path,
) -> None:
    """Index ``records`` into a fresh collection and print recall@5 and MRR per search mode."""
    questions = [q for q in labelled_set(records, per_template, templates) if q.patient in records]
    client = connect(None, lite_path=folder / f"{name}.db")
    store = MilvusStore(client, name, embedder.dimension)
    store.ensure_collection()
    chunks: list[Chunk] = [c for p, rs in records.items() for r in rs for c in resource_chunks(r, p)]
    for start in range(0, len(chunks), 512):
        batch = chunks[start : start + 512]
        store.upsert(batch, embedder.embed([c.text for c in batch]))
    store.flush()
    query = ContextualQuery(embedder, store)
    asked = len({q.text for q in questions})
    print(
        f"{name}: {len(records)} patients, {len(chunks)} chunks; {len(questions)} labelled questions"
        f" from {asked} of {len(templates)} templates; embedding {embedder.identity}"
    )
    for mode in ("dense", "bm25", "hybrid"):
        results = []
        for q in questions:
            hits = query.search(q.patient, q.text, k=10, mode=mode)
            ranked = list(dict.fromkeys(h.resource_id for h in hits))
            results.append((q.text in named, *scores(ranked, q.answers)))
        line = [f"{mode:7s}"]
        for label, picked in (("all", results), ("paraphrased", [r for r in results if not r[0]])):
            line.append(f"{label}: recall@5 {_mean(picked, 1):.3f} MRR {_mean(picked, 2):.3f}")
        if named:
            hit = [r for r in results if r[0]]
            line.append(f"named: recall@5 {_mean(hit, 1):.3f} MRR {_mean(hit, 2):.3f}")
        print("   ".join(line), flush=True)
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    parser.add_argument("--per-template", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="embedding variant")
    parser.add_argument("--sets", nargs="+", choices=("synthea", "hl7"), default=["synthea", "hl7"])
    args = parser.parse_args()
    embedder = Embedder(embedding_dir(), precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        if "synthea" in args.sets:
            names = {t for t, _ in TEMPLATES[-NAMED:]}
            records = synthea_records(args.corpora)
            evaluate("synthea", records, TEMPLATES, names, embedder, args.per_template, Path(tmp))
        if "hl7" in args.sets:
            records = hl7_records(args.corpora)
            evaluate("hl7", records, HL7_TEMPLATES, set(), embedder, args.per_template, Path(tmp))


if __name__ == "__main__":
    main()
