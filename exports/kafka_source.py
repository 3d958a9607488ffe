"""Reading an export's snapshot from the running deployment's topics (no consumer group).

Each topic is read from its beginning to the end offsets found when reading starts, so an
export is a consistent snapshot; the offsets go into the dataset card.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from exports.datasets import Sources
from kernel.events import Alert, ClinicianFeedback, DraftNote, FhirRecord, Topics
from kernel.replay_kafka import read_topic

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)


async def _read(
    bootstrap: str,
    security: Mapping[str, Any] | None,
    topic: str,
    model: type[Model],
    source: dict[str, Any],
    skipped: dict[str, int],
    progress: Callable[[str, int], None],
) -> list[Model]:
    records = await read_topic(bootstrap, topic, security=security)
    ends: dict[str, int] = {}
    out = []
    for record in records:
        ends[str(record.partition)] = max(ends.get(str(record.partition), 0), record.offset + 1)
        try:
            out.append(model.model_validate_json(record.value))
        except ValidationError:
            skipped[topic] = skipped.get(topic, 0) + 1
    source[topic] = dict(sorted(ends.items()))
    progress(topic, len(records))
    if skipped.get(topic):
        log.warning("export: %d records of %s do not parse and were skipped", skipped[topic], topic)
    return out


async def read_sources(
    bootstrap: str,
    topics: Topics,
    progress: Callable[[str, int], None] = lambda _t, _n: None,
    security: Mapping[str, Any] | None = None,
) -> tuple[Sources, dict[str, Any]]:
    """The snapshot, and where it ends on each topic (with counts of records that did not parse)."""
    source: dict[str, Any] = {}
    skipped: dict[str, int] = {}
    records = await _read(bootstrap, security, topics.fhir, FhirRecord, source, skipped, progress)
    drafts = await _read(bootstrap, security, topics.drafts, DraftNote, source, skipped, progress)
    feedback = await _read(bootstrap, security, topics.feedback, ClinicianFeedback, source, skipped, progress)
    alerts = await _read(bootstrap, security, topics.alerts, Alert, source, skipped, progress)
    if skipped:
        source["skipped"] = dict(sorted(skipped.items()))
    return Sources(records, drafts, feedback, alerts), source
