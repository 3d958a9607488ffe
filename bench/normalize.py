"""HL7 v2 → validated FHIR R4 throughput on one core, over the third-party corpus.

Takes every corpus message the normalizer maps today (ADT family, ORU^R01), normalizes the
set repeatedly and prints the median rate over several runs, for parsing alone and for
the whole path (parse + map + fhir.resources validation). Issue #4 extends it to the
full message mix and adds hl7apy for comparison.

Usage: python bench/normalize.py [--runs 5] [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from stream.errors import Hl7Error
from stream.events import SUPPORTED_HL7_EVENTS
from stream.hl7v2 import decode_payload, parse_message
from stream.normalize import normalize_hl7


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


def rate(fn, messages: list[str], min_seconds: float = 1.0) -> float:
    n, start = 0, time.perf_counter()
    while True:
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
    resources = sum(len(normalize_hl7(t, tz=tz).resources) for t in messages)
    runs = f"({args.runs} runs, 1 core)"
    print(f"corpus messages mapped today: {len(messages)} ({resources} FHIR resources)")
    print(f"parse only                  : median {statistics.median(parse_rates):8.0f} msg/s {runs}")
    print(f"parse + map + validate      : median {statistics.median(full_rates):8.0f} msg/s {runs}")


if __name__ == "__main__":
    main()
