"""Offline conversion: HL7 v2 text → one FHIR R4 transaction Bundle per message.

The same `normalize_hl7` path as the streaming normalizer, without a broker. Each Bundle
PUTs its resources by their deterministic ids, so loading the output into a FHIR server
twice changes nothing. Pure functions: the CLI reads files and writes the results.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from kernel.errors import Hl7Error
from kernel.events import deterministic_id
from kernel.hl7v2.parser import split_batch
from kernel.quality import DataQualityIssue
from stream.normalize import Normalized, normalize_hl7


@dataclass(frozen=True, slots=True)
class Converted:
    """One message: its Bundle, or the typed error that stopped it."""

    index: int  # position of the message in its source
    bundle: dict[str, Any] | None
    error: Hl7Error | None
    message: str = ""  # the message's text (CR-separated), for further checks
    unmapped: dict[str, int] = field(default_factory=dict)
    issues: tuple[DataQualityIssue, ...] = ()  # what it converted despite (`kernel.quality`)


def as_bundle(result: Normalized, source_system: str) -> dict[str, Any]:
    """A transaction Bundle that PUTs every resource by its id."""
    return {
        "resourceType": "Bundle",
        "id": deterministic_id("Bundle", source_system, result.control_id, result.message_type),
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.UUID(hex=_as_hex32(r['id']))}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in [*result.resources, *(r for _, also in result.also for r in also)]
        ],
    }


def _as_hex32(resource_id: str) -> str:
    # Our ids are 32 hex digits; ids from elsewhere are hashed to a UUID-shaped value.
    if len(resource_id) == 32 and all(c in "0123456789abcdef" for c in resource_id):
        return resource_id
    return deterministic_id("fullUrl", resource_id)


def convert_text(
    text: str, *, tz: ZoneInfo, source_system: str = "file", strict: bool = False
) -> Iterator[Converted]:
    """Convert every message in the text (one, several, or an FHS/BHS batch); with ``strict``,
    a data-quality problem refuses its message instead of becoming an issue."""
    for index, message in enumerate(split_batch(text).messages):
        try:
            result = normalize_hl7(message, tz=tz, strict=strict)
        except Hl7Error as exc:
            yield Converted(index, None, exc, message)
            continue
        bundle = as_bundle(result, source_system)
        yield Converted(index, bundle, None, message, result.unmapped, result.issues)
