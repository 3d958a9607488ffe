"""HL7 v2 → validated FHIR R4 throughput on one core, over the third-party corpus.

Takes every corpus message the normalizer converts (all supported types: ADT, ORU/OUL,
orders, pharmacy, MDM, SIU, VXU, PPR), normalizes the set repeatedly and prints the median
rate over several runs: parsing alone, the whole path (parse + map + fhir.resources
validation + unmapped report), and, in the same run for comparison, hl7apy's
``parse_message`` on the same messages (hl7apy builds a full element tree per message).
It says whether the parser and mappers ran compiled (mypyc, `make native`) and, when they
did, measures the whole path again as pure Python in a child process (``CLINSTREAM_NATIVE=0``),
one after the other; and whether validation ran with `kernel.fhir_models`' cached null check.

Usage: python bench/normalize.py [--runs 5] [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from hl7apy.parser import parse_message as hl7apy_parse_message

import stream
from kernel.errors import Hl7Error
from kernel.events import SUPPORTED_HL7_EVENTS
from kernel.fhir_models import MODELS, uses_faster_check
from kernel.hl7v2.parser import decode_payload, parse_message, split_batch
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


def every_message(corpora: Path) -> list[str]:
    """Every message of every corpus file (batch files split), refused ones included."""
    out: list[str] = []
    for path in sorted((corpora / "hl7v2").rglob("*")):
        if path.is_file():
            out.extend(split_batch(decode_payload(path.read_bytes())).messages)
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


def _pure_python_rate(args: argparse.Namespace) -> float:
    """The whole path's median rate in a child process running the mappers as pure Python."""
    command = [sys.executable, __file__, "--full-only", "--runs", str(args.runs)]
    command += ["--corpora", str(args.corpora)]
    env = {**os.environ, "CLINSTREAM_NATIVE": "0"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--full-only", action="store_true", help="print only the whole path's median")
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
    if args.full_only:
        print(f"{statistics.median(full_rates):.0f}")
        return

    def cold(text: str) -> None:
        clear_memos()  # no verdict remembered from any earlier message
        normalize_hl7(text, tz=tz)

    cold_rates = [rate(cold, messages) for _ in range(args.runs)]
    everything = every_message(args.corpora)

    def outcome(text: str) -> None:
        try:
            normalize_hl7(text, tz=tz)
        except Hl7Error:
            pass  # refused with its typed error, as the stream dead-letters it

    every_rates = [rate(outcome, everything) for _ in range(args.runs)]
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
    if stream.NATIVE:
        pure = _pure_python_rate(args)
        print(f"  same, pure Python          : median {pure:8.0f} msg/s {runs}, CLINSTREAM_NATIVE=0")
    print(f"  same, no remembered verdict: median {statistics.median(cold_rates):8.0f} msg/s {runs}")
    print(
        f"whole corpus, refusals too  : median {statistics.median(every_rates):8.0f} msg/s {runs},"
        f" all {len(everything)} messages"
    )
    print(
        f"hl7apy parse_message only   : median {apy:8.0f} msg/s {runs}, on the {len(apy_messages)}"
        " of them it parses"
    )
    print(f"full path vs hl7apy parse   : {full / apy:8.1f}x")
    print(f"parser and mappers          : {'compiled (mypyc)' if stream.NATIVE else 'pure Python'}")
    faster = all(uses_faster_check(m) for m in MODELS.values())
    print(f"fhir_core null-in-list check: {'field list cached per class' if faster else 'original'}")


if __name__ == "__main__":
    main()
