"""The pinned outcome of every supported corpus message: converted (with its resource counts) or
refused (with the error, its HL7 code and location).

A message that regresses from converted to refused, or whose output changes shape, fails its
test. When a change is meant, re-pin and review the diff of corpus_outcomes.json:

    .venv/bin/python -m tests.unit.stream.corpus_outcomes
"""

import json
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

from kernel.errors import Hl7Error
from kernel.events import SUPPORTED_HL7_EVENTS
from kernel.hl7v2.parser import decode_payload, parse_message
from stream.normalize import normalize_hl7
from tests.conftest import corpora_dir, hl7_corpus_files

PINS = Path(__file__).with_name("corpus_outcomes.json")
UTC = ZoneInfo("UTC")


def supported(path):
    """Whether the file's (first) message is of a type the normalizer handles."""
    try:
        msg = parse_message(decode_payload(path.read_bytes()))
    except Hl7Error:
        return False
    return (msg.message_code, msg.trigger_event) in SUPPORTED_HL7_EVENTS


def key(path):
    return path.relative_to(corpora_dir() / "hl7v2").as_posix()


def outcome(path):
    """``converted: Observation 3, Patient 1`` or ``refused: MappingError 102 at OBX-5``."""
    try:
        result = normalize_hl7(decode_payload(path.read_bytes()), tz=UTC)
    except Hl7Error as exc:
        return f"refused: {type(exc).__name__} {exc.code} at {exc.location or '-'}"
    counts = Counter(r["resourceType"] for r in result.resources)
    return "converted: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items()))


def pinned():
    return json.loads(PINS.read_text())


if __name__ == "__main__":
    pins = {key(p): outcome(p) for p in hl7_corpus_files() if supported(p)}
    PINS.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
    done = sum(v.startswith("converted") for v in pins.values())
    print(f"pinned {len(pins)} messages: {done} converted, {len(pins) - done} refused")
