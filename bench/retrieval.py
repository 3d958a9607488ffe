"""Retrieval quality on the Synthea patients: recall@5 and MRR for dense, BM25 and hybrid search.

The 42 Synthea R4 bundles in ../shared/corpora/fhir/smart-synthea-r4/ go through the FHIR
input normalizer and the indexer's chunking into a Milvus Lite collection, embedded with
the real ONNX model. The labelled set is written here by the team: 28 question templates,
each with the rule that says which of a patient's resources answer it (a LOINC code, a
resource type, a condition, vaccine, drug or procedure name), asked of the first three
patients (by file name) that have an answer: 84 questions. 20 templates are paraphrases
("does the patient smoke" for "Tobacco smoking status"), 8 are names as typed. A resource
answers a question whatever its date; ordering by date is the timeline's job, not the ranking's.

recall@5 = answers in the top 5 / min(answers, 5); MRR = mean of 1 / rank of the first answer
(0 when none is in the top 10).

Usage: python bench/retrieval.py [--corpora ../shared/corpora] [--per-template 3] [--precision fp32|int8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clinstream.models import embedding_dir
from indexer.chunking import Chunk, resource_chunks
from indexer.milvus_store import MilvusStore, connect
from indexer.ort_session import Embedder
from indexer.query import ContextualQuery
from kernel.events import FhirInbound
from stream.fhir_input import normalize_fhir

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


def labelled_set(records: dict[str, list[Resource]], per_template: int) -> list[Question]:
    questions = []
    for text, rule in TEMPLATES:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    parser.add_argument("--per-template", type=int, default=3)
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="embedding variant")
    args = parser.parse_args()
    records = synthea_records(args.corpora)
    questions = [q for q in labelled_set(records, args.per_template) if q.patient in records]
    embedder = Embedder(embedding_dir(), precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        client = connect(None, lite_path=Path(tmp) / "retrieval.db")
        store = MilvusStore(client, "synthea", embedder.dimension)
        store.ensure_collection()
        chunks: list[Chunk] = [c for p, rs in records.items() for r in rs for c in resource_chunks(r, p)]
        for start in range(0, len(chunks), 512):
            batch = chunks[start : start + 512]
            store.upsert(batch, embedder.embed([c.text for c in batch]))
        store.flush()
        query = ContextualQuery(embedder, store)
        print(
            f"Synthea: {len(records)} patients, {len(chunks)} chunks; {len(questions)} labelled questions"
            f" from {len(TEMPLATES)} templates; embedding {embedder.identity}"
        )
        names = {t for t, _ in TEMPLATES[-NAMED:]}
        for mode in ("dense", "bm25", "hybrid"):
            results = []
            for q in questions:
                hits = query.search(q.patient, q.text, k=10, mode=mode)
                ranked = list(dict.fromkeys(h.resource_id for h in hits))
                results.append((q.text in names, *scores(ranked, q.answers)))
            line = [f"{mode:7s}"]
            for label, picked in (("all", results), ("paraphrased", [r for r in results if not r[0]])):
                line.append(f"{label}: recall@5 {_mean(picked, 1):.3f} MRR {_mean(picked, 2):.3f}")
            named = [r for r in results if r[0]]
            line.append(f"named: recall@5 {_mean(named, 1):.3f} MRR {_mean(named, 2):.3f}")
            print("   ".join(line))
        client.close()


if __name__ == "__main__":
    main()
