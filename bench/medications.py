"""Medications named in the corpus: how many the drug tables resolve to ingredients, before and
after `kernel.drugs.drug_writing`, and whether one RxNorm code always gives one drug.

Every medication concept of the corpus is collected: MedicationRequest, MedicationStatement,
MedicationAdministration and MedicationDispense (their medicationCodeableConcept or the display
of their Medication reference) and Medication (its code), from the FHIR files of
`../shared/corpora/fhir` and the HL7 v2 messages of `../shared/corpora/hl7v2` (RXE, RXO, RXA,
RDE...), each through its normalizer as in a deployment. Distinct concepts are counted once.

- **before**: what decision support read until now, the concept's text, else its first display;
- **after**: `drug_writing`, the first of its RxNorm displays, text, other displays and the
  reference's display that names an ingredient.

Resolved means the dictionary lookup (`drug-named-entity-recognition`, exact names, no fuzzy
match) found at least one ingredient. Then, per RxNorm code seen with more than one writing:
whether every writing resolves to the same ingredients (before and after). Last, each
RxNorm-coded concept again with its text replaced by a pharmacy's own label (as local
formularies write orders): whether it still resolves to the ingredients it had.

Usage: python bench/medications.py [--corpora ../shared/corpora]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.corpus import fhir_normalized, hl7_normalized  # noqa: E402
from kernel.chart import RXNORM  # noqa: E402
from kernel.drugs import drug_writing, ingredients  # noqa: E402

ORDERS = ("MedicationRequest", "MedicationStatement", "MedicationAdministration", "MedicationDispense")


def concepts(resource: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """The medication concept of a resource, with its Medication reference's display."""
    kind = resource.get("resourceType")
    if kind in ORDERS:
        reference = str((resource.get("medicationReference") or {}).get("display") or "")
        concept = resource.get("medicationCodeableConcept")
        if isinstance(concept, dict) or reference:
            yield (concept if isinstance(concept, dict) else {}), reference
    elif kind == "Medication" and isinstance(resource.get("code"), dict):
        yield resource["code"], ""


def corpus_resources(corpora: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(source, resource) of every FHIR file and every HL7 v2 message that normalizes."""
    for _, resources in fhir_normalized(corpora):
        for resource in resources:
            yield "fhir", resource
    for result in hl7_normalized(corpora):
        for resource in result.resources:
            yield "hl7v2", resource


def before(concept: dict[str, Any], reference: str) -> str:
    """What decision support read until now: text, else first display, else the reference's."""
    first = next((str(c["display"]) for c in concept.get("coding") or [] if c.get("display")), "")
    return str(concept.get("text") or first or reference)


def _rxnorm_display(concept: dict[str, Any]) -> bool:
    return any(
        c.get("system") == RXNORM and c.get("display")
        for c in concept.get("coding") or []
        if isinstance(c, dict)
    )


def main(args: argparse.Namespace) -> None:
    seen: dict[str, tuple[str, dict[str, Any], str]] = {}
    for source, resource in corpus_resources(args.corpora):
        for concept, reference in concepts(resource):
            key = json.dumps([concept, reference], sort_keys=True)
            seen.setdefault(key, (source, concept, reference))
    by_source: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    rx_writings: dict[str, dict[str, tuple[frozenset[str], frozenset[str]]]] = defaultdict(dict)
    code_only = 0
    changed = []
    for source, concept, reference in seen.values():
        old, new = ingredients(before(concept, reference)), ingredients(drug_writing(concept, reference))
        counts = by_source[source]
        counts[0] += 1
        counts[1] += bool(old)
        counts[2] += bool(new)
        if old != new:
            changed.append((before(concept, reference), drug_writing(concept, reference), old, new))
        codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
        for c in codings:
            if c.get("system") == RXNORM and c.get("code"):
                rx_writings[str(c["code"])][before(concept, reference)] = (old, new)
        if (
            codings
            and not concept.get("text")
            and not any(c.get("display") for c in codings)
            and not reference
        ):
            code_only += 1
    for source, (total, old, new) in sorted(by_source.items()):
        print(
            f"{source:6} {total:4} distinct medication concepts: resolved to ingredients before {old} "
            f"({old / total:.0%}), after {new} ({new / total:.0%})"
        )
    print(f"concepts with codes only (no text, no display): {code_only} (not resolvable offline)")
    several = {code: w for code, w in rx_writings.items() if len(w) > 1}
    agree_old = sum(len({o for o, _ in w.values()}) == 1 for w in several.values())
    agree_new = sum(len({n for _, n in w.values()}) == 1 for w in several.values())
    print(
        f"RxNorm codes seen with more than one writing: {len(several)}; every writing gives the same "
        f"ingredients before {agree_old}/{len(several)}, after {agree_new}/{len(several)}"
    )
    relabelled = [(c, r) for _, c, r in seen.values() if _rxnorm_display(c)]
    same_old = same_new = 0
    for n, (concept, reference) in enumerate(relabelled):
        local = {**concept, "text": f"PHARM-{n:04d} TAB"}  # a pharmacy's own label over the RxNorm coding
        truth = ingredients(drug_writing(concept, reference))
        same_old += bool(truth) and ingredients(before(local, "")) == truth
        same_new += bool(truth) and ingredients(drug_writing(local, "")) == truth
    print(
        f"the {len(relabelled)} RxNorm-coded concepts again, their text replaced by a pharmacy's own label: "
        f"same ingredients as written before {same_old}, after {same_new}"
    )
    print(f"\nconcepts whose ingredients changed ({len(changed)}):")
    for old_text, new_text, old, new in changed[: args.show]:
        print(f"  {old_text[:40]!r:42} {sorted(old)} -> {new_text[:40]!r:42} {sorted(new)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=REPO.parent / "shared" / "corpora")
    parser.add_argument("--show", type=int, default=40, help="changed concepts to list")
    main(parser.parse_args())
