"""The audit log's records: FHIR R4 AuditEvents after IHE Basic Audit Log Patterns, sealed
into hash chains, and read back (pure).

One event says who (the principal, from where), did what (action, the route or tool), to which
patient and which resources, with what outcome, when. `seal` adds the chain: each writer
numbers its events per partition and each event carries the SHA-256 of that writer's previous
event in the partition (``previous``), so deleting, changing or reordering an event breaks the
chain `verify` walks. With one API process, as `clinstream up` runs it, that is every event of
the partition; several writers each keep their own chain through the same partitions.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kernel.events import deterministic_id

Action = Literal["C", "R", "U", "D", "E"]
Outcome = Literal["0", "4", "8"]
CHAIN = "urn:clinstream:audit-chain"
PRINCIPAL_SYSTEM = "urn:clinstream:principal"
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_OUTCOME_WORDS: Mapping[str, str] = {"0": "success", "4": "refused", "8": "failed"}


def outcome_of(status: int) -> Outcome:
    """The AuditEvent outcome of an HTTP status: success, a refusal (4xx), or a failure."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(
    *,
    principal: str,
    action: Action,
    what: str,
    patient: str | None,
    resources: Iterable[str],
    outcome: Outcome,
    detail: str,
    at: datetime,
    trace_id: str,
    observer: str,
    address: str | None = None,
    query: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One FHIR R4 AuditEvent. ``what``: the route or tool called (``POST /query``);
    ``query``: its arguments, kept base64 as the AuditEvent's query entity."""
    entities: list[dict[str, Any]] = []
    if patient:
        entities.append(
            {
                "what": {"reference": f"Patient/{patient}"},
                "type": {"system": _ENTITY_TYPE, "code": "1"},
                "role": {"system": _ROLE, "code": "1"},
            }
        )
    operation: dict[str, Any] = {
        "type": {"system": _ENTITY_TYPE, "code": "2"},
        "role": {"system": _ROLE, "code": "24"},
        "name": what,
    }
    if query is not None:
        operation["query"] = base64.b64encode(
            json.dumps(query, sort_keys=True, default=str).encode()
        ).decode()
    entities.append(operation)
    entities += [{"what": {"reference": ref}} for ref in sorted(set(resources))]
    agent: dict[str, Any] = {
        "who": {"identifier": {"system": PRINCIPAL_SYSTEM, "value": principal}},
        "requestor": True,
    }
    if address:
        agent["network"] = {"address": address, "type": "2"}
    return {
        "resourceType": "AuditEvent",
        "id": deterministic_id("AuditEvent", trace_id, what),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "action": action,
        "recorded": at.isoformat(),
        "outcome": outcome,
        "outcomeDesc": detail[:500],
        "agent": [agent],
        "source": {"observer": {"display": observer}},
        "entity": entities,
    }


def summary(event: Mapping[str, Any]) -> dict[str, Any]:
    """``{time, principal, action, patient, resources, outcome}`` of one AuditEvent."""
    agents = event.get("agent") or [{}]
    who = agents[0].get("who", {}).get("identifier", {}).get("value", "")
    patient, resources, what = None, [], ""
    for entity in event.get("entity", []):
        ref = entity.get("what", {}).get("reference", "")
        if entity.get("role", {}).get("code") == "1" and ref.startswith("Patient/"):
            patient = ref.removeprefix("Patient/")
        elif entity.get("role", {}).get("code") == "24":
            what = str(entity.get("name", ""))
        elif ref:
            resources.append(ref)
    return {
        "time": event.get("recorded"),
        "principal": who,
        "action": what or event.get("action"),
        "patient": patient,
        "resources": resources,
        "outcome": _OUTCOME_WORDS.get(str(event.get("outcome")), str(event.get("outcome"))),
    }


def genesis(writer: str) -> str:
    """The ``previous`` of a writer's first event in a partition."""
    return hashlib.sha256(f"clinstream-audit-genesis:{writer}".encode()).hexdigest()


def record_hash(value: bytes) -> str:
    """The hash the next event of the chain carries: SHA-256 of the record as written."""
    return hashlib.sha256(value).hexdigest()


def seal(event: Mapping[str, Any], *, writer: str, seq: int, previous: str) -> bytes:
    """The record to write: the event with its chain link, as canonical JSON."""
    link = {
        "url": CHAIN,
        "extension": [
            {"url": "writer", "valueString": writer},
            {"url": "seq", "valueInteger": seq},
            {"url": "previous", "valueString": previous},
        ],
    }
    sealed = {**event, "extension": [*event.get("extension", []), link]}
    return json.dumps(sealed, sort_keys=True, separators=(",", ":")).encode()


def link_of(event: Mapping[str, Any]) -> tuple[str, int, str] | None:
    """(writer, seq, previous) of a sealed event, or None."""
    for ext in event.get("extension", []):
        if isinstance(ext, Mapping) and ext.get("url") == CHAIN:
            parts = {e.get("url"): e for e in ext.get("extension", []) if isinstance(e, Mapping)}
            try:
                return (
                    str(parts["writer"]["valueString"]),
                    int(parts["seq"]["valueInteger"]),
                    str(parts["previous"]["valueString"]),
                )
            except (KeyError, TypeError, ValueError):
                return None
    return None


@dataclass(frozen=True, slots=True)
class Break:
    """One place the chain does not hold."""

    partition: int
    offset: int
    reason: str


@dataclass(slots=True)
class Verification:
    """What `verify` found: events checked, chains (writer, partition) walked, breaks."""

    events: int = 0
    chains: int = 0
    breaks: list[Break] = field(default_factory=list)


def verify(records: Iterable[tuple[int, int, bytes]]) -> Verification:
    """Walk ``(partition, offset, value)`` records in offset order per partition."""
    last: dict[tuple[int, str], tuple[int, str]] = {}
    found = Verification()
    for partition, offset, value in records:
        found.events += 1
        try:
            event = json.loads(value)
        except ValueError:
            found.breaks.append(Break(partition, offset, "not JSON"))
            continue
        link = link_of(event) if isinstance(event, Mapping) else None
        if link is None:
            found.breaks.append(Break(partition, offset, "no chain link"))
            continue
        writer, seq, previous = link
        expected_seq, expected_previous = last.get((partition, writer), (-1, genesis(writer)))
        if seq != expected_seq + 1:
            found.breaks.append(
                Break(partition, offset, f"writer's event {expected_seq + 1} expected, {seq} found")
            )
        elif previous != expected_previous:
            found.breaks.append(Break(partition, offset, "previous hash does not match the event before it"))
        last[(partition, writer)] = (seq, record_hash(value))
    found.chains = len(last)
    return found
