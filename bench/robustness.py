"""How much of what real feeds send converts: the corpus, and seeded mutations of it.

Every HL7 v2 message of ``../shared/corpora`` (batches split into their messages) is sorted:

* **not eligible**: no readable MSH, control id or type, a type the normalizer does not map,
  or no patient identifier (PID-3, else PID-2/PID-4). These are refused by design (AR/AE at
  the edge) and are not in the percentages;
* of the eligible ones: **converted whole**, **converted with issues** (data-quality issues
  on the record, by code), or **refused** (by error and location).

Then each eligible message is mutated the ways real senders differ (`bench/feed_mutations.py`:
a timestamp in another DTM precision or a sender's deviation, an OBX value type the mapper may
not know, an OBR repeated under the same filler number), ``--variants`` times per kind with a
fixed seed, and sorted the same way. Every converted message was validated with
fhir.resources by the normalizer itself; the script also checks, independently of the
mapper, that each resource id is unique within its message and every reference of the
message points at a resource it produced (the retired patient of a merge included).

Last, field agreement with FHIR-Converter's expected bundles (`bench/agreement.py`), with
omissions counted as disagreements. Target: at least 98 % of the eligible messages converted,
whole or with issues, corpus and variants alike.

Usage: python bench/robustness.py [--corpora ../shared/corpora] [--variants 3] [--seed 7]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.agreement import run as agreement
from bench.feed_mutations import MUTATIONS, mutate
from bench.normalize import every_message
from kernel.errors import Hl7Error
from kernel.events import SUPPORTED_HL7_EVENTS
from kernel.hl7v2.parser import (
    check_header,
    parse_message,
    patient_identifier,
)
from stream.normalize import normalize_hl7

TARGET = 0.98
UTC = ZoneInfo("UTC")


@dataclass
class Sorted:
    """The outcome counts of one set of messages."""

    not_eligible: Counter[str] = field(default_factory=Counter)
    whole: int = 0
    with_issues: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    issues: Counter[str] = field(default_factory=Counter)
    broken_references: int = 0

    @property
    def eligible(self) -> int:
        return self.whole + self.with_issues + sum(self.refused.values())

    @property
    def converted_share(self) -> float:
        return (self.whole + self.with_issues) / self.eligible if self.eligible else 0.0


def eligibility(text: str) -> str:
    """Why a message is not eligible ("" when it is): the reasons the edge refuses by design."""
    try:
        msg = parse_message(text)
        check_header(msg)
    except Hl7Error as exc:
        return f"unreadable header ({exc.location or 'framing'})"
    if (msg.message_code, msg.trigger_event) not in SUPPORTED_HL7_EVENTS:
        return "type not mapped"
    try:
        patient_identifier(msg)
    except Hl7Error:
        return "no patient identifier"
    return ""


def _references_resolve(resources: list[dict[str, Any]]) -> bool:
    """Ids unique per type, and every relative reference points at a resource of the message."""
    ids = [(r["resourceType"], r["id"]) for r in resources]
    if len(ids) != len(set(ids)):
        return False
    known = {f"{t}/{i}" for t, i in ids}
    return all(ref in known for r in resources for ref in _references(r))


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [str(node["reference"])] if isinstance(node.get("reference"), str) else []
        return out + [ref for key, value in node.items() if key != "reference" for ref in _references(value)]
    if isinstance(node, list):
        return [ref for item in node for ref in _references(item)]
    return []


def sort_message(text: str, into: Sorted) -> bool:
    """Convert one message and count its outcome; whether it was eligible."""
    why = eligibility(text)
    if why:
        into.not_eligible[why] += 1
        return False
    try:
        result = normalize_hl7(text, tz=UTC)
    except Hl7Error as exc:
        into.refused[f"{type(exc).__name__} at {exc.location or '-'}"] += 1
        return True
    if result.issues:
        into.with_issues += 1
        into.issues.update(i.code for i in result.issues)
    else:
        into.whole += 1
    if not _references_resolve(result.resources + [r for _, also in result.also for r in also]):
        into.broken_references += 1
    return True


def _print(title: str, s: Sorted) -> None:
    total = s.eligible + sum(s.not_eligible.values())
    print(f"{title}: {total} messages, {s.eligible} eligible (readable MSH, mapped type, patient id)")
    if s.eligible:
        print(f"  converted whole        {s.whole:>6} {s.whole / s.eligible:>7.1%}")
        print(f"  converted with issues  {s.with_issues:>6} {s.with_issues / s.eligible:>7.1%}")
        refused = sum(s.refused.values())
        print(f"  refused                {refused:>6} {refused / s.eligible:>7.1%}")
    for reason, n in s.refused.most_common():
        print(f"    {n:>5} x {reason}")
    if s.issues:
        print("  issues by code: " + ", ".join(f"{code} {n}" for code, n in s.issues.most_common()))
    print(f"  messages whose references or ids do not hold: {s.broken_references}")
    print("  not eligible: " + (", ".join(f"{why} {n}" for why, n in s.not_eligible.most_common()) or "none"))
    verdict = "met" if s.converted_share >= TARGET else "NOT met"
    print(f"  converted, whole or with issues: {s.converted_share:.1%} (target >= {TARGET:.0%}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora"
    )
    parser.add_argument("--variants", type=int, default=3, help="mutated variants per kind and message")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    corpus = Sorted()
    eligible = [text for text in every_message(args.corpora) if sort_message(text, corpus)]
    _print("corpus", corpus)

    rng = random.Random(args.seed)
    by_kind = {kind: Sorted() for kind in sorted(MUTATIONS)}
    for text in eligible:
        for kind, tally in by_kind.items():
            for _ in range(args.variants):
                sort_message(mutate(text, rng, kind)[0], tally)
    everything = Sorted()
    for kind, tally in by_kind.items():
        print(f"  {kind:<13} variants: {tally.eligible:>5} eligible, {tally.converted_share:.1%} converted")
        everything.whole += tally.whole
        everything.with_issues += tally.with_issues
        everything.refused.update(tally.refused)
        everything.issues.update(tally.issues)
        everything.not_eligible.update(tally.not_eligible)
        everything.broken_references += tally.broken_references
    _print(f"mutated variants (seed {args.seed}, {args.variants} per kind and message)", everything)

    report = agreement(args.corpora)
    t = report.total
    print(
        f"agreement with FHIR-Converter on the fields it fills (omissions count): {t.rate:.1%}"
        f" ({t.agree} of {t.compared + t.missing}); on the fields both fill: {t.both_filled_rate:.1%};"
        f" {report.converted} of {report.converted + len(report.refused)} samples converted"
    )


if __name__ == "__main__":
    main()
