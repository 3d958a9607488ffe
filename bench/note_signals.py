"""Safety signals in notes: phrases and ConText alone, then with the embedding model.

Runs `inference.cds.note_signals.evaluate` (the rule decision support runs) on each sentence of a
held-out labelled set (`bench/data/note_sentences.tsv`: written by the team after the
examples and threshold in `inference.cds.note_signals` were fixed, never used to choose them), each
sentence as a note of its own. A sentence counts as raised for a signal when the rule gives a
finding for it (negated, historical and other-person mentions give none). Prints, for phrases
only and for phrases plus the embedding model (`NoteMatcher` on the ONNX embedder that
`make models` built): per signal true and false positives and misses, overall precision and
recall, the sentences missed and the false alarms, and the median time per note.

Usage: python bench/note_signals.py [--min-cosine 0.5] [--data bench/data/note_sentences.tsv]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from clinstream.settings import Settings
from clinstream.stack import open_embedder
from inference.cds import note_signals
from kernel.attachments import text_attachment

AT = datetime(2026, 1, 1, tzinfo=UTC)


def labelled(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, sentence = line.split("\t", 1)
            rows.append((label, sentence))
    return rows


def note(sentence: str) -> dict[str, object]:
    return {
        "resourceType": "DocumentReference",
        "id": "bench",
        "status": "current",
        "content": [{"attachment": text_attachment(sentence)}],
    }


def raised(sentence: str, matcher: note_signals.NoteMatcher | None) -> tuple[set[str], float]:
    began = time.perf_counter()
    findings = note_signals.evaluate([note(sentence)], default_time=AT, matcher=matcher)
    return {f.key.split("/", 1)[1] for f in findings}, time.perf_counter() - began


def report(name: str, rows: list[tuple[str, str]], matcher: note_signals.NoteMatcher | None) -> None:
    counts: Counter[tuple[str, str]] = Counter()
    misses, alarms, times = [], [], []
    for label, sentence in rows:
        got, took = raised(sentence, matcher)
        times.append(took)
        for signal in got:
            counts[signal, "tp" if signal == label else "fp"] += 1
            if signal != label:
                alarms.append(f"{signal} ← {sentence}")
        if label != note_signals.NOT_A_SIGNAL and label not in got:
            counts[label, "fn"] += 1
            misses.append(f"{label}: {sentence}")
    tp = sum(v for (_, k), v in counts.items() if k == "tp")
    fp = sum(v for (_, k), v in counts.items() if k == "fp")
    fn = sum(v for (_, k), v in counts.items() if k == "fn")
    print(f"-- {name}")
    for signal in (s.name for s in note_signals.SIGNALS):
        print(
            f"  {signal:18} found {counts[signal, 'tp']:2}  missed {counts[signal, 'fn']:2}"
            f"  false alarms {counts[signal, 'fp']:2}"
        )
    precision = tp / (tp + fp) if tp + fp else 1.0
    print(
        f"  all signals: precision {precision:.2f}, recall {tp / max(tp + fn, 1):.2f}"
        f" ({tp} found, {fn} missed, {fp} false alarms);"
        f" median {statistics.median(times) * 1e3:.2f} ms a note"
    )
    for line in misses:
        print(f"    missed       {line}")
    for line in alarms:
        print(f"    false alarm  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-cosine", type=float, default=note_signals.SEMANTIC_MIN_COSINE)
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "note_sentences.tsv")
    args = parser.parse_args()
    rows = labelled(args.data)
    positives = sum(label != note_signals.NOT_A_SIGNAL for label, _ in rows)
    embedder = open_embedder(Settings())
    print(
        f"{len(rows)} held-out sentences ({positives} with a signal, {len(rows) - positives} without);"
        f" embedding model {embedder.identity} on {embedder.providers}, threshold {args.min_cosine}"
    )
    report("phrases and ConText only", rows, None)
    report("with the embedding model", rows, note_signals.NoteMatcher(embedder, min_cosine=args.min_cosine))


if __name__ == "__main__":
    main()
