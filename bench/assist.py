"""Diagnostic and treatment suggestions, and cited answers, measured on the Synthea patients
through the whole embedded stack (FHIR ingress → broker → normalizer → assistance stage → API).

Diagnoses. For each patient bundle, the Conditions of the target families (obesity,
prediabetes, diabetes and its complications, hypertension, CKD, anaemia, hyperlipidemia,
hypertriglyceridemia, hypothyroidism) are hidden, with every entry that references them (and
what references those). The rest is posted to `/fhir`; `/assist/diagnoses` is asked. A
suggestion is right when its family is the family of a hidden Condition that was current
(clinicalStatus active, no abatement). Printed per family and overall: precision, recall, and
suggestions per patient (the burden), next to the rule versions that made them.

Treatments. A second copy of each patient (fresh ids) keeps its Conditions and loses its active
medication orders (with what references them). For each current documented hypertension,
hyperlipidemia or type 2 diabetes, a ``start`` suggestion for that problem counts when its drug
is guideline first-line (a thiazide, ACE inhibitor, ARB or CCB; a statin; metformin): the share
of documented problems covered. Then contraindications are planted in further copies, each
against what the unplanted run suggested: an allergy to the suggested drug, an eGFR of
25 mL/min/1.73 m² (metformin), an active interacting drug (lithium with a thiazide, ACE
inhibitor or ARB; clarithromycin with a statin). A suggestion the planted fact contraindicates
is counted. This script's own class tables decide both (not the rules' code).

Latency: each patient's diagnoses and treatments asked --repeat times over HTTP (p50/p95), and
`/assist/ask` with the built-in ONNX model for --ask patients (p50/p95, tokens/s).

The notes stage runs without its generator (drafting discharge summaries of 80 Synthea bundles
would take the CPU the latencies are measured on).

Generators: the same answers from the built-in ONNX model and from llama.cpp's server on the same
GGUF (`clinstream llm-serve`), alternating in one run: tokens/s and answer time each.

Usage: python bench/assist.py [--limit N] [--repeat 3] [--ask 8] [--only generators]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinstream.settings import Settings  # noqa: E402
from clinstream.stack import running_stack  # noqa: E402
from inference.assist import diagnoses as dx_rules  # noqa: E402
from inference.assist import treatments as tx_rules  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpora" / "fhir" / "smart-synthea-r4"
TOKEN = "bench-assist-token"  # noqa: S105 - the API token of this run's own embedded stack

# The bench's own reading of Synthea's codes: family of each target Condition.
FAMILY = {
    "162864005": "obesity",
    "414916001": "obesity",
    "15777000": "prediabetes",
    "714628002": "prediabetes",
    "44054006": "diabetes",
    "38341003": "hypertension",
    "59621000": "hypertension",
    "431855005": "ckd",
    "431856006": "ckd",
    "433144002": "ckd",
    "431857002": "ckd",
    "433146000": "ckd",
    "46177005": "ckd",
    "271737000": "anemia",
    "55822004": "hyperlipidemia",
    "13644009": "hyperlipidemia",
    "302870006": "hypertriglyceridemia",
    "40930008": "hypothyroidism",
}
FIRST_LINE = {
    "hypertension": {
        "hydrochlorothiazide",
        "chlorthalidone",
        "indapamide",
        "lisinopril",
        "enalapril",
        "ramipril",
        "captopril",
        "benazepril",
        "losartan",
        "valsartan",
        "candesartan",
        "irbesartan",
        "olmesartan",
        "telmisartan",
        "amlodipine",
        "nifedipine",
        "diltiazem",
        "verapamil",
        "felodipine",
        "labetalol",  # first line in pregnancy
    },
    "hyperlipidemia": {"atorvastatin", "rosuvastatin", "simvastatin", "pravastatin", "lovastatin"},
    "diabetes": {"metformin"},
}
RAAS = {
    "lisinopril",
    "enalapril",
    "ramipril",
    "captopril",
    "benazepril",
    "losartan",
    "valsartan",
    "candesartan",
    "irbesartan",
    "olmesartan",
    "telmisartan",
}
THIAZIDE = {"hydrochlorothiazide", "chlorthalidone", "indapamide"}
STATINS = FIRST_LINE["hyperlipidemia"]
SAME_CLASS = [
    RAAS - {"losartan", "valsartan", "candesartan", "irbesartan", "olmesartan", "telmisartan"},
    {"losartan", "valsartan", "candesartan", "irbesartan", "olmesartan", "telmisartan"},
    THIAZIDE,
    STATINS,
    {"amlodipine", "nifedipine", "felodipine"},
    {"metformin"},
]
# Planted interacting drug → the suggested drugs it contraindicates (FDA labels).
INTERACTING = {
    "lithium carbonate 300 MG Oral Capsule": THIAZIDE | RAAS,
    "clarithromycin 500 MG Oral Tablet": {"atorvastatin", "simvastatin", "lovastatin"},
}


def family_of(condition: dict[str, Any]) -> set[str]:
    coding = condition.get("code", {}).get("coding", [{}])[0]
    display = str(coding.get("display", "")).lower()
    out = {FAMILY[coding["code"]]} if coding.get("code") in FAMILY else set()
    if "diabet" in display and "prediabet" not in display:
        out.add("diabetes")
    return out


def current(condition: dict[str, Any]) -> bool:
    status = condition.get("clinicalStatus", {}).get("coding", [{}])[0].get("code")
    return status == "active" and "abatementDateTime" not in condition


def _mentions(value: Any, hidden: set[str]) -> bool:
    if isinstance(value, dict):
        return any(v in hidden if k == "reference" else _mentions(v, hidden) for k, v in value.items())
    if isinstance(value, list):
        return any(_mentions(v, hidden) for v in value)
    return False


def without(bundle: dict[str, Any], hide: Iterable[str]) -> dict[str, Any]:
    """``bundle`` without the entries ``hide`` and, transitively, what references them."""
    hidden = set(hide)
    while True:
        more = {
            e["fullUrl"]
            for e in bundle["entry"]
            if e["fullUrl"] not in hidden and _mentions(e["resource"], hidden)
        }
        if not more:
            break
        hidden |= more
    out = dict(bundle)
    out["entry"] = [e for e in bundle["entry"] if e["fullUrl"] not in hidden]
    return out


def fresh_ids(bundle: dict[str, Any], tag: str) -> dict[str, Any]:
    """A copy with every resource id (and reference to it) replaced: another patient."""
    text = json.dumps(bundle)
    for e in bundle["entry"]:
        old = e["resource"]["id"]
        text = text.replace(old, str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{old}")))
    copied: dict[str, Any] = json.loads(text)
    return copied


def patient_id(bundle: dict[str, Any]) -> str:
    return str(
        next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    )


def plant(bundle: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    pid = patient_id(out)
    resource = {**resource, "id": str(uuid.uuid4())}
    key = "patient" if resource["resourceType"] == "AllergyIntolerance" else "subject"
    resource[key] = {"reference": f"urn:uuid:{pid}"}
    out["entry"].append(
        {
            "fullUrl": f"urn:uuid:{resource['id']}",
            "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]},
        }
    )
    return out


def allergy_to(drug: str) -> dict[str, Any]:
    return {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"text": f"Allergy to {drug}"},
    }


def last_date(bundle: dict[str, Any]) -> str:
    """A minute after the patient's latest observation, and before their death if they died: a
    planted fact then falls within the record, and is the newest of its kind."""
    stamps = [
        datetime.fromisoformat(str(e["resource"]["effectiveDateTime"]).replace("Z", "+00:00"))
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and "T" in str(e["resource"].get("effectiveDateTime", ""))
    ]
    when = max(stamps, default=datetime.now(UTC)) + timedelta(minutes=1)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    if patient.get("deceasedDateTime"):
        died = datetime.fromisoformat(str(patient["deceasedDateTime"]).replace("Z", "+00:00"))
        when = min(when, died - timedelta(minutes=1))
    return when.isoformat()


def egfr(value: float, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "33914-3",
                    "display": "Estimated Glomerular Filtration Rate",
                }
            ]
        },
        "effectiveDateTime": when,
        "valueQuantity": {
            "value": value,
            "unit": "mL/min/{1.73_m2}",
            "system": "http://unitsofmeasure.org",
            "code": "mL/min/{1.73_m2}",
        },
    }


def active_drug(text: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": text},
        "authoredOn": when,
    }


def ingredient(suggestion: dict[str, Any]) -> str:
    return str((suggestion.get("medication") or {}).get("coding", [{}])[0].get("display", "")).lower()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


class Api:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.latency: dict[str, list[float]] = {"diagnoses": [], "treatments": [], "ask": []}

    async def post_bundle(self, bundle: dict[str, Any]) -> None:
        r = await self.http.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        r.raise_for_status()

    async def ask(self, route: str, body: dict[str, Any], *, timed: bool = True) -> httpx.Response:
        started = time.perf_counter()
        r = await self.http.post(f"/assist/{route}", json=body)
        if timed and r.status_code == 200:
            self.latency[route].append(time.perf_counter() - started)
        return r

    async def ready(self, pid: str) -> None:
        """Until the assistance stage knows the patient (3 minutes at most)."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (await self.ask("diagnoses", {"patient_id": pid}, timed=False)).status_code == 200:
                return
            await asyncio.sleep(0.3)
        raise TimeoutError(f"patient {pid} not ready")


def stack_settings(tmp: str) -> Settings:
    return Settings(
        var_dir=Path(tmp),
        http={"api_token": TOKEN, "port": 0},
        mllp={"port": 0},
        notes={"generator": False},
        assist={"ask_timeout_s": 120},
    )


async def run(args: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)
    bundles = []
    for path in sorted(CORPUS.glob("*.json")):
        b = json.loads(path.read_text(encoding="utf-8-sig"))
        if any(e["resource"]["resourceType"] == "Patient" for e in b["entry"]):
            bundles.append((path.stem.split("_")[0], b))
    bundles = bundles[: args.limit]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if args.only == "generators":
        await asyncio.to_thread(generators, bundles, args.ask)
        return
    with tempfile.TemporaryDirectory() as tmp:
        async with running_stack(stack_settings(tmp)) as stack:
            base = f"http://127.0.0.1:{stack.http_port}"
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=180) as http:
                api = Api(http)
                await diagnoses(api, bundles, args)
                await treatments(api, bundles, args)
                print_latency(api)
    # Answers on a stack of their own: a few patients, asked once the indexer has caught up (the
    # bulk load above keeps it embedding for many minutes, which is not a clinician's usual wait).
    with tempfile.TemporaryDirectory() as tmp:
        async with running_stack(stack_settings(tmp)) as stack:
            base = f"http://127.0.0.1:{stack.http_port}"
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=180) as http:
                api = Api(http)
                await asking(api, stack, bundles[: args.ask])
                print_latency(api)
    await asyncio.to_thread(generators, bundles, args.ask)


async def settle(api: Api, pids: list[str]) -> None:
    """Wait until every patient's chart is complete: two equal answers 2 s apart."""
    for pid in pids:
        await api.ready(pid)
    previous = None
    while True:
        answers = [(await api.ask("treatments", {"patient_id": p}, timed=False)).text for p in pids]
        if answers == previous:
            return
        previous = answers
        await asyncio.sleep(2.0)


async def diagnoses(api: Api, bundles: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    truth: dict[str, set[str]] = {}
    pids = []
    for _, bundle in bundles:
        hidden = [
            e
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Condition" and family_of(e["resource"])
        ]
        posted = without(bundle, [e["fullUrl"] for e in hidden])
        pid = patient_id(posted)
        truth[pid] = {f for e in hidden if current(e["resource"]) for f in family_of(e["resource"])}
        await api.post_bundle(posted)
        pids.append(pid)
    await settle(api, pids)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    burden = []
    for pid in pids:
        for _ in range(args.repeat):
            r = await api.ask("diagnoses", {"patient_id": pid})
        got = {s["family"] for s in r.json()["suggestions"]}
        burden.append(len(r.json()["suggestions"]))
        for f in got & truth[pid]:
            tp[f] += 1
        for f in got - truth[pid]:
            fp[f] += 1
        for f in truth[pid] - got:
            fn[f] += 1
    versions = dx_rules.VERSIONS
    rule_of = {
        "obesity": "dx-obesity",
        "diabetes": "dx-diabetes-t2",
        "prediabetes": "dx-prediabetes",
        "hypertension": "dx-hypertension",
        "ckd": "dx-ckd",
        "anemia": "dx-anemia",
        "hyperlipidemia": "dx-hypercholesterolemia",
        "hypertriglyceridemia": "dx-hypertriglyceridemia",
        "hypothyroidism": "dx-hypothyroidism",
    }
    print(f"\nDiagnoses: {len(pids)} Synthea patients, target families hidden and posted through /fhir")
    print(f"{'family':22} {'rule':28} {'TP':>3} {'FP':>3} {'FN':>3} {'precision':>9} {'recall':>7}")
    for family, rule in rule_of.items():
        t, p, n = tp[family], fp[family], fn[family]
        prec = f"{t / (t + p):.2f}" if t + p else "—"
        rec = f"{t / (t + n):.2f}" if t + n else "—"
        print(f"{family:22} {rule + ' v' + versions[rule]:28} {t:>3} {p:>3} {n:>3} {prec:>9} {rec:>7}")
    t, p, n = sum(tp.values()), sum(fp.values()), sum(fn.values())
    print(f"{'overall':22} {'':28} {t:>3} {p:>3} {n:>3} {t / max(1, t + p):>9.2f} {t / max(1, t + n):>7.2f}")
    print(f"burden: {statistics.mean(burden):.2f} suggestions per patient (max {max(burden)})")


async def treatments(api: Api, bundles: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    documented: dict[str, dict[str, str]] = {}  # pid → family → condition code
    variants: dict[str, dict[str, Any]] = {}
    for name, bundle in bundles:
        copy_ = fresh_ids(bundle, f"tx/{name}")
        meds = [
            e["fullUrl"]
            for e in copy_["entry"]
            if e["resource"]["resourceType"] == "MedicationRequest"
            and e["resource"].get("status") == "active"
        ]
        posted = without(copy_, meds)
        pid = patient_id(posted)
        documented[pid] = {
            f: e["resource"]["code"]["coding"][0]["code"]
            for e in posted["entry"]
            if e["resource"]["resourceType"] == "Condition" and current(e["resource"])
            for f in family_of(e["resource"])
            if f in FIRST_LINE
            and (f != "diabetes" or e["resource"]["code"]["coding"][0]["code"] == "44054006")
        }
        variants[pid] = posted
        await api.post_bundle(posted)
    await settle(api, list(variants))
    covered = total = 0
    missed = []
    suggested: dict[str, list[dict[str, Any]]] = {}
    for pid in variants:
        for _ in range(args.repeat):
            r = await api.ask("treatments", {"patient_id": pid})
        suggested[pid] = [s for s in r.json()["suggestions"] if s["kind"] == "start"]
        for family, code in documented[pid].items():
            total += 1
            ok = any(
                s["for"]["coding"][0]["code"] == code and ingredient(s) in FIRST_LINE[family]
                for s in suggested[pid]
            )
            covered += ok
            if not ok:
                missed.append((family, [ingredient(s) for s in suggested[pid]]))
    print(f"\nTreatments: {len(variants)} patients, active medication orders hidden, Conditions kept")
    print(f"rules: {', '.join(f'{r} v{v}' for r, v in tx_rules.VERSIONS.items())}")
    share = covered / max(1, total)
    print(
        f"documented hypertension, hyperlipidemia, type 2 diabetes with a first-line start: {covered}/{total}"
    )
    print(f"  share covered: {share:.2f}")
    for family, got in missed:
        print(f"  not covered: {family} (suggested: {got or 'nothing'})")

    # Planted contraindications, each against what the unplanted run suggested.
    planted: list[tuple[str, dict[str, Any], set[str], str]] = []
    for n, (pid, bundle) in enumerate(variants.items()):
        drugs = {ingredient(s) for s in suggested[pid]} - {""}
        for drug in sorted(drugs):
            same = set().union(*[c for c in SAME_CLASS if drug in c]) | {drug}
            planted.append(
                (
                    f"allergy to {drug}",
                    plant(fresh_ids(bundle, f"allergy/{n}/{drug}"), allergy_to(drug)),
                    same,
                    "allergy",
                )
            )
        if "diabetes" in documented[pid]:
            planted.append(
                (
                    "eGFR 25",
                    plant(fresh_ids(bundle, f"egfr/{n}"), egfr(25, last_date(bundle))),
                    {"metformin"},
                    "renal",
                )
            )
        for text, excluded in INTERACTING.items():
            if drugs & excluded:
                planted.append(
                    (
                        text.split()[0],
                        plant(fresh_ids(bundle, f"ddi/{n}/{text}"), active_drug(text, last_date(bundle))),
                        excluded,
                        "interaction",
                    )
                )
    for _, bundle, _, _ in planted:
        await api.post_bundle(bundle)
    await settle(api, [patient_id(b) for _, b, _, _ in planted])
    bad: Counter[str] = Counter()
    cases: Counter[str] = Counter()
    for label, bundle, excluded, kind in planted:
        r = await api.ask("treatments", {"patient_id": patient_id(bundle)}, timed=False)
        starts = [ingredient(s) for s in r.json()["suggestions"] if s["kind"] == "start"]
        cases[kind] += 1
        wrong = [d for d in starts if d in excluded]
        if wrong:
            bad[kind] += 1
            print(f"  contraindicated suggestion: {wrong} despite {label}")
    print(
        "planted contraindications: "
        + ", ".join(
            f"{k} {cases[k]} cases, {bad[k]} contraindicated" for k in ("allergy", "renal", "interaction")
        )
        + f"; total contraindicated suggestions: {sum(bad.values())}"
    )


async def asking(api: Api, stack: Any, bundles: list[tuple[str, dict[str, Any]]]) -> None:
    questions = [
        "How has the blood pressure been?",
        "Why is the creatinine changing?",
        "What are the latest cholesterol results?",
        "How is the glucose control?",
    ]
    pids = []
    for _, bundle in bundles:
        await api.post_bundle(bundle)
        pids.append(patient_id(bundle))
    await settle(api, pids)
    previous, started = -1, time.monotonic()
    while True:  # the record index has caught up when its size stops changing
        count = await asyncio.to_thread(stack.store.count)
        if count == previous:
            break
        previous = count
        await asyncio.sleep(3.0)
    print(
        f"\nindex caught up: {previous} chunks of {len(pids)} patients in {time.monotonic() - started:.0f} s"
    )
    tokens, seconds, cited, sentences, generated = 0, 0.0, 0, 0, 0
    for pid in pids:
        for question in questions[:2]:
            r = await api.ask("ask", {"patient_id": pid, "question": question})
            if r.status_code != 200:
                print(f"  ask: {r.status_code}")
                continue
            body = r.json()
            tokens += body["generated_tokens"]
            seconds += body["generation_s"]
            sentences += len(body["sentences"])
            cited += sum(1 for s in body["sentences"] if s["citations"])
            generated += len(body["sentences"]) - sum(1 for s in body["sentences"] if ":" in s["text"][:25])
    print(
        f"Cited answers (built-in ONNX model): {len(api.latency['ask'])} questions, {sentences} sentences, "
        f"{cited} cited; {generated} of them model prose that passed the guard"
    )
    if seconds:
        print(f"decoding {tokens / seconds:.1f} tokens/s ({tokens} tokens)")


def generators(bundles: list[tuple[str, dict[str, Any]]], n: int) -> None:
    """The same answers from the built-in ONNX generator and from llama.cpp's OpenAI-compatible
    server on the same GGUF (`clinstream llm-serve`), alternating, in one run: tokens/s each."""
    from clinstream.llm_server import llama_server
    from clinstream.models import generator_dir
    from inference.assist.answers import answer
    from inference.assist.facts import facts
    from inference.assist.openai_client import OpenAIChat
    from kernel.chart import Chart, apply
    from kernel.events import FhirInbound
    from kernel.generator_session import Generator
    from stream.fhir_input import normalize_fhir

    charts = []  # through our own FHIR normalizer, as the stage receives them
    for _, bundle in bundles[:n]:
        inbound = FhirInbound(
            interaction="transaction",
            resources=[e["resource"] for e in bundle["entry"]],
            full_urls=[e.get("fullUrl") for e in bundle["entry"]],
        )
        charts += [apply(Chart(group.patient_id), group.resources) for group in normalize_fhir(inbound)]
    onnx = Generator(generator_dir())
    tokens: dict[str, list[int]] = {"onnx": [], "llama.cpp": []}
    decoding: dict[str, list[float]] = {"onnx": [], "llama.cpp": []}
    answers: dict[str, list[float]] = {"onnx": [], "llama.cpp": []}
    with llama_server() as url:
        server = OpenAIChat(url, "smollm2", timeout_s=120)
        for chart in charts:
            f = facts(chart, datetime.now(UTC))
            for name, model in (("onnx", onnx), ("llama.cpp", server)):
                started = time.perf_counter()
                found = answer("How has the blood pressure been?", chart, f, [], [], model, max_new_tokens=96)
                elapsed = time.perf_counter() - started
                tokens[name].append(found.generated_tokens)
                decoding[name].append(found.generation_s)
                answers[name].append(elapsed)
        server.close()
    print(f"\nGenerators side by side ({len(charts)} answers each, same prompts, same GGUF weights):")
    for name in tokens:
        rate = sum(tokens[name]) / max(sum(decoding[name]), 1e-9)
        print(
            f"  {name:10} {rate:6.1f} tokens/s ({sum(tokens[name])} tokens); "
            f"answer p50 {statistics.median(answers[name]):.2f} s"
        )


def print_latency(api: Api) -> None:
    print("\nLatency per request over HTTP (this machine):")
    for route, values in api.latency.items():
        if values:
            print(
                f"  {route:11} n={len(values):4} p50 {statistics.median(values) * 1000:8.1f} ms"
                f"  p95 {pct(values, 0.95) * 1000:8.1f} ms"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ask", type=int, default=8)
    parser.add_argument("--only", choices=["generators"], help="only the ONNX vs llama.cpp comparison")
    asyncio.run(run(parser.parse_args()))
