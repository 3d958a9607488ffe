"""HL7 v2 → validated FHIR R4 throughput on one core, over the third-party corpus.

Takes every corpus message the normalizer converts (all supported types: ADT, ORU/OUL,
orders, pharmacy, MDM, SIU, VXU, PPR), normalizes the set repeatedly and prints the median
rate over several runs: parsing alone, the whole path (parse + map + fhir.resources
validation + unmapped report), and, in the same run for comparison, hl7apy's
``parse_message`` on the same messages (hl7apy builds a full element tree per message).
The last line says whether validation ran with `stream.fhir_models`' cached null check.

Usage: python bench/normalize.py [--runs 5] [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from hl7apy.parser import parse_message as hl7apy_parse_message

from stream.errors import Hl7Error
from stream.events import SUPPORTED_HL7_EVENTS
from stream.fhir_models import MODELS, uses_faster_check
from stream.hl7v2 import decode_payload, parse_message
from stream.normalize import normalize_hl7
from stream.validation import clear_memos


def corpus_messages(corpora: Path) -> list[str]:
    out = []
    for path in sorted((corpora / "hl7v2").rglob("*")):
        if not path.is_file():
            continue
        text = decode_payload(path.read_bytes())
        try:
            msg = parse_message(text)
            if (msg.message_code, msg.trigger_event) not in SUPPORTED_HL7_EVENTS:
                continue
            normalize_hl7(text, tz=ZoneInfo("UTC"))
        except Hl7Error:
            continue
        out.append(text)
    return out


def _hl7apy_parse(text: str) -> object:
    return hl7apy_parse_message(text.replace("\n", "\r"), find_groups=True)


def _hl7apy_parses(text: str) -> bool:
    try:
        _hl7apy_parse(text)
    except Exception:  # hl7apy raises many types on real-world messages
        return False
    return True


def rate(fn, messages: list[str], min_seconds: float = 1.0) -> float:
    """Messages per second over whole passes of the set; each pass starts with no verdict
    remembered, so only repeats within the corpus (as in a live feed) are served from memory."""
    n, start = 0, time.perf_counter()
    while True:
        clear_memos()
        for text in messages:
            fn(text)
        n += len(messages)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    messages = corpus_messages(args.corpora)
    tz = ZoneInfo("UTC")
    parse_rates = [rate(parse_message, messages) for _ in range(args.runs)]
    full_rates = [rate(lambda t: normalize_hl7(t, tz=tz), messages) for _ in range(args.runs)]

    def cold(text: str) -> None:
        clear_memos()  # no verdict remembered from any earlier message
        normalize_hl7(text, tz=tz)

    cold_rates = [rate(cold, messages) for _ in range(args.runs)]
    apy_messages = [t for t in messages if _hl7apy_parses(t)]
    apy_rates = [rate(_hl7apy_parse, apy_messages) for _ in range(args.runs)]
    resources = sum(len(normalize_hl7(t, tz=tz).resources) for t in messages)
    types = len({parse_message(t).message_type for t in messages})
    runs = f"({args.runs} runs, 1 core)"
    full = statistics.median(full_rates)
    apy = statistics.median(apy_rates)
    print(
        f"corpus messages converted   : {len(messages)} of {types} message types ({resources} FHIR resources)"
    )
    print(f"parse only                  : median {statistics.median(parse_rates):8.0f} msg/s {runs}")
    print(f"parse + map + validate      : median {full:8.0f} msg/s {runs}")
    print(f"  same, no remembered verdict: median {statistics.median(cold_rates):8.0f} msg/s {runs}")
    print(
        f"hl7apy parse_message only   : median {apy:8.0f} msg/s {runs}, on the {len(apy_messages)}"
        " of them it parses"
    )
    print(f"full path vs hl7apy parse   : {full / apy:8.1f}x")
    faster = all(uses_faster_check(m) for m in MODELS.values())
    print(f"fhir_core null-in-list check: {'field list cached per class' if faster else 'original'}")


if __name__ == "__main__":
    main()
