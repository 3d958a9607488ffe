"""Draft-note evaluation over the Synthea patients: citations, faithfulness, coverage, speed.

For each patient bundle in the corpus (normalized by our own FHIR normalizer), the latest stay
(an Encounter of a class that calls for a discharge summary) gets a discharge summary written by
the real ONNX generator, exactly as the notes stage writes it. Printed:

- sentences, and the share carrying citations (goal >= 95 %), before and after the guard;
- numeric / date / drug faithfulness, checked a second way: every number, date and drug of a
  sentence looked up in the raw JSON of the resources it cites (not the rendered text the guard
  reads), before the guard (what the model wrote) and after it (what ships; goal 100 %);
- coverage: active medications at discharge, and laboratory results of the stay, cited by the draft;
- time per discharge summary (median, p95; goal <= 20 s on 2 cores) and decoding tokens/s.

Usage: python bench/notes.py [--corpus DIR] [--limit N] [--threads N] [--chart-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinstream.models import generator_dir
from inference.notes.drafting import (
    DISCHARGE_CLASSES,
    Draft,
    plan,
    write_draft,
)
from kernel.chart import Chart, apply, ref_of
from kernel.drugs import ingredients
from kernel.events import FhirInbound
from kernel.generator_session import Generator
from kernel.grounding import Sentence, facts, normal_number
from stream.fhir_input import normalize_fhir

_DIGITS = re.compile(r"\d+(?:\.\d+)?")
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "fhir" / "smart-synthea-r4"


def charts(corpus: Path) -> Iterable[tuple[str, Chart]]:
    """(file name, chart) per patient bundle, through our FHIR normalizer."""
    for path in sorted(corpus.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8-sig"))
        entries = [e for e in bundle.get("entry", []) if "resource" in e]
        inbound = FhirInbound(
            interaction="transaction",
            resources=[e["resource"] for e in entries],
            full_urls=[e.get("fullUrl") for e in entries],
        )
        for group in normalize_fhir(inbound):
            yield path.name, apply(Chart(group.patient_id), group.resources)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float | str):
        yield str(value)


def faithful(sentence: Sentence, chart: Chart) -> tuple[int, int]:
    """(facts found in the raw JSON of the cited resources, facts) for one sentence."""
    raw = [chart.resources[r] for r in sentence.citations if r in chart.resources]
    strings = [s for r in raw for s in _strings(r)]
    joined = " ".join(strings).lower()
    numbers = {normal_number(tok) for s in strings for tok in _DIGITS.findall(s)}
    drugs = ingredients(joined)
    found = total = 0
    for fact in facts(sentence.text):
        total += 1
        if fact.kind == "date":
            found += fact.value in joined
        elif fact.kind == "time":
            found += fact.value in joined
        elif fact.kind == "number":
            found += fact.value in numbers
        elif fact.kind == "drug":
            found += fact.value in drugs
        else:
            found += fact.shown in joined or bool(drugs)
    return found, total


def latest_stay(chart: Chart) -> dict[str, Any] | None:
    stays = [
        e
        for e in chart.of("Encounter")
        if (e.get("class") or {}).get("code") in DISCHARGE_CLASSES and e.get("status") == "finished"
    ]
    stays.sort(key=lambda e: str((e.get("period") or {}).get("start", "")))
    return stays[-1] if stays else None


def coverage(
    draft: Draft, chart: Chart, start: datetime | None, end: datetime | None
) -> tuple[int, int, int, int]:
    """(active medications cited, active medications, stay lab results cited, stay lab results)."""
    cited = set(draft.citations())
    meds = [
        ref_of(m)
        for m in chart.of("MedicationRequest")
        if m.get("status") in ("active", "on-hold")
        and (end is None or not m.get("authoredOn") or datetime.fromisoformat(m["authoredOn"]) <= end)
    ]
    labs = []
    for obs in chart.of("Observation"):
        cats = {c.get("code") for k in obs.get("category", []) for c in k.get("coding", [])}
        when = obs.get("effectiveDateTime")
        if "laboratory" in cats and when and start and end:
            at = datetime.fromisoformat(when)
            if start <= at <= end:
                labs.append(obs)
    # a stay's result is covered when the draft cites it or its analyte's newer result of the stay
    keys_cited = {json.dumps(o.get("code"), sort_keys=True) for o in labs if ref_of(o) in cited}
    labs_covered = sum(1 for o in labs if json.dumps(o.get("code"), sort_keys=True) in keys_cited)
    return sum(m in cited for m in meds), len(meds), labs_covered, len(labs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--limit", type=int, default=0, help="at most this many patients (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: default)")
    parser.add_argument("--chart-only", action="store_true", help="no generator: structured sections only")
    args = parser.parse_args()

    generator = None if args.chart_only else Generator(generator_dir(), threads=args.threads)
    print(
        f"machine: {os.cpu_count()} CPUs; generator: {generator.name if generator else 'none'}"
        f"{' on ' + ','.join(generator.providers) if generator else ''}"
    )
    times: list[float] = []
    rates: list[float] = []
    tallies = {
        k: 0
        for k in (
            "kept",
            "kept_cited",
            "gen",
            "gen_cited",
            "gen_kept",
            "removed",
            "f_before",
            "n_before",
            "f_after",
            "n_after",
            "meds_cited",
            "meds",
            "labs_cited",
            "labs",
            "patients",
            "no_stay",
        )
    }
    for n, (name, chart) in enumerate(charts(args.corpus)):
        if args.limit and n >= args.limit:
            break
        stay = latest_stay(chart)
        if stay is None:
            tallies["no_stay"] += 1
            continue
        tallies["patients"] += 1
        end = datetime.fromisoformat(stay["period"]["end"])
        p = plan(chart, "discharge-summary", ref_of(stay), end)
        started = time.perf_counter()
        draft = write_draft(p, generator, now=end)
        times.append(time.perf_counter() - started)
        if draft.generated_tokens and draft.generation_s:
            rates.append(draft.generated_tokens / draft.generation_s)
        kept = [s for _, lines, _ in draft.sections for s in lines]
        removed = [v.sentence for v in draft.guard.failed]
        tallies["kept"] += len(kept)
        tallies["kept_cited"] += sum(bool(s.citations) for s in kept)
        generated = [s for s in kept + removed if s.generated]
        tallies["gen"] += len(generated)
        tallies["gen_cited"] += sum(bool(s.citations) for s in generated)
        tallies["gen_kept"] += sum(s.generated for s in kept)
        tallies["removed"] += len(removed)
        for s in kept + removed:
            f, t = faithful(s, chart)
            tallies["f_before"] += f
            tallies["n_before"] += t
        for s in kept:
            f, t = faithful(s, chart)
            tallies["f_after"] += f
            tallies["n_after"] += t
        mc, m, lc, lt = coverage(draft, chart, p.start, p.end)
        tallies["meds_cited"] += mc
        tallies["meds"] += m
        tallies["labs_cited"] += lc
        tallies["labs"] += lt
        print(
            f"  {name[:32]:32} {times[-1]:6.1f} s  {draft.generated_tokens:4d} tokens  "
            f"{len(kept):3d} kept  {len(removed):2d} removed",
            flush=True,
        )

    t = tallies

    def pct(a: int, b: int) -> str:
        return f"{100 * a / b:.1f} % ({a}/{b})" if b else "n/a (0)"

    print()
    print(f"patients with a stay: {t['patients']} (without one: {t['no_stay']})")
    print(f"sentences shipped: {t['kept']}; with citations: {pct(t['kept_cited'], t['kept'])}")
    print(
        f"model sentences: {t['gen']}; cited by attribution: {pct(t['gen_cited'], t['gen'])}; "
        f"shipped after the guard: {pct(t['gen_kept'], t['gen'])}"
    )
    print(
        f"facts (numbers, dates, drugs) found in the cited resources' JSON: before the guard "
        f"{pct(t['f_before'], t['n_before'])}, after {pct(t['f_after'], t['n_after'])}"
    )
    print(
        f"active medications cited: {pct(t['meds_cited'], t['meds'])}; "
        f"lab results of the stay covered: {pct(t['labs_cited'], t['labs'])}"
    )
    if times:
        ordered = sorted(times)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        print(
            f"discharge summary time: median {statistics.median(times):.1f} s, p95 {p95:.1f} s, "
            f"max {max(times):.1f} s"
        )
    if rates:
        print(f"decoding: median {statistics.median(rates):.1f} tokens/s (prompt processing included)")


if __name__ == "__main__":
    main()
