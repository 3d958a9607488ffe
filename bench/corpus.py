"""The third-party corpus as decision support would read it: every FHIR document's resources and
every HL7 v2 message, each through its normalizer (those it converts), as a deployment does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from connectors.backfill import messages_of
from kernel.events import FhirInbound
from kernel.hl7v2.parser import decode_payload
from stream.fhir_input import normalize_fhir
from stream.normalize import Normalized, normalize_hl7


def fhir_documents(corpora: Path) -> Iterator[tuple[Path, Any]]:
    """(file, JSON document) of every .json file and every .ndjson line under ``corpora/fhir``."""
    for path in sorted((corpora / "fhir").rglob("*")):
        if path.suffix not in (".json", ".ndjson"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
            docs = (
                [json.loads(line) for line in text.splitlines() if line.strip()]
                if path.suffix == ".ndjson"
                else [json.loads(text)]
            )
        except (OSError, ValueError):
            continue
        for doc in docs:
            yield path, doc


def resources_in(node: Any) -> Iterator[dict[str, Any]]:
    """Every resource in a document, Bundle entries and contained ones included."""
    if isinstance(node, dict):
        if node.get("resourceType"):
            yield node
        for value in node.values():
            yield from resources_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from resources_in(value)


def hl7_normalized(corpora: Path) -> Iterator[Normalized]:
    """Every HL7 v2 message under ``corpora/hl7v2`` that the normalizer converts, converted."""
    for path in sorted((corpora / "hl7v2").rglob("*")):
        if not path.is_file() or path.suffix == ".md":
            continue
        try:
            messages = list(messages_of(path))
        except (OSError, ValueError):
            continue
        for message in messages:
            try:
                yield normalize_hl7(decode_payload(message), tz=ZoneInfo("UTC"))
            except Exception:  # noqa: S112 - dead-lettered by the normalizer; not what is measured
                continue


def fhir_normalized(corpora: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    """(file, resources) of every FHIR document, through the FHIR normalizer (canonical code
    systems, UCUM units) as a deployment's FHIR ingress would send them on."""
    for path, doc in fhir_documents(corpora):
        found = [r for r in resources_in(doc) if r["resourceType"] != "Bundle"]
        if not found:
            continue
        try:
            groups = normalize_fhir(FhirInbound(interaction="batch-entry", resources=found))
        except Exception:  # noqa: S112 - dead-lettered by the normalizer; not what is measured
            continue
        yield path, [r for g in groups for r in g.resources]
