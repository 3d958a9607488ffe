"""Re-running decision support over the history of a newly mapped code (the Kafka side).

`ehr.fhir.v1` is kept for good (the system of record). A re-run reads it to its end now, without
a consumer group, and sends every record whose Observations carry the mapped code back to it:
the same key and resource ids, the LOINC coding added (`terminology.with_mapping`), in the
backfill lane. Decision support applies them like any record (idempotently: the same resource
ids), so a baseline fills in and a recent result that was invisible raises its alert; a result
older than the stale window pages no one. The indexer finds the chunks unchanged but for the
added code.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from inference.cds.terminology import CodeMapping, with_mapping
from kernel.events import FhirRecord, Topics
from kernel.kafka import Outgoing, Written
from kernel.replay_kafka import scan_topic

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Outgoing]], Awaitable[list[Written]]]


async def rerun(
    bootstrap: str,
    topics: Topics,
    mapping: CodeMapping,
    publish: Publish,
    *,
    security: Mapping[str, Any] | None = None,
    progress: Callable[[int, int], None] = lambda _read, _sent: None,
) -> int:
    """Send the history of ``mapping``'s code through decision support again; the records sent."""
    read = sent = 0
    async for batch in scan_topic(bootstrap, topics.fhir, security=security):
        outgoing = []
        for raw in batch:
            read += 1
            try:
                record = FhirRecord.model_validate_json(raw.value or b"")
            except ValueError:
                continue  # decision support dead-lettered it when it first came
            mapped = with_mapping(record, mapping)
            if mapped is not None:
                headers = {k: v.decode() for k, v in mapped.envelope.to_headers()}
                outgoing.append(Outgoing(topics.fhir, mapped.model_dump_json().encode(), raw.key, headers))
        if outgoing:
            await publish(outgoing)
            sent += len(outgoing)
        progress(read, sent)
    log.info("code mapping v%d re-ran %d of %d records", mapping.current.version, sent, read)
    return sent
