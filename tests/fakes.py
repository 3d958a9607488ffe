"""The shared in-memory fakes of the tests (one of each), for the unit tests of pure wiring.

Real parts (broker, Milvus, ONNX Runtime) are in the integration tests; these stand in for
them where a test is about what our code does around them.
"""

from __future__ import annotations

import asyncio

import numpy as np
from faststream.kafka.annotations import KafkaMessage

from connectors.errors import BrokerUnavailableError, RecordTooLargeError


class MemorySink:
    """A `RecordSink` that keeps what it was sent; ``fail`` makes it refuse, ``gate`` makes it wait,
    ``max_bytes`` makes it refuse larger records as the real sinks do past ``max_record_bytes``."""

    def __init__(self, max_bytes=None):
        self.records = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.max_bytes = max_bytes

    async def send(self, topic, value, *, key, headers):
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BrokerUnavailableError("down")
        if self.max_bytes is not None and len(value) > self.max_bytes:
            raise RecordTooLargeError(f"input of {len(value)} bytes is larger than the broker accepts")
        self.records.append((topic, value, key, dict(headers)))

    def on(self, topic):
        """The records sent to ``topic``."""
        return [r for r in self.records if r[0] == topic]


class FakeEmbedder:
    """An embedder whose every vector is ones (3-d): for tests of what surrounds embedding."""

    def embed(self, texts):
        return np.ones((len(texts), 3), dtype=np.float32)


class MemoryStore:
    """A vector store that records the calls made to it, in order."""

    def __init__(self):
        self.calls = []

    def upsert(self, chunks, vectors):
        self.calls.append(("upsert", [c.id for c in chunks], vectors.shape))

    def retire(self, keep):
        self.calls.append(("retire", dict(keep)))

    def unchanged(self, chunks):
        return set()  # holds nothing: every chunk is written

    def flush(self):
        self.calls.append(("flush",))


def collected(broker, topic):
    """What FastStream's in-memory broker publishes to ``topic``: a list filled as the test runs."""
    seen = []

    @broker.subscriber(topic, group_id=f"collect-{topic}")
    async def collect(msg: KafkaMessage):
        seen.append(msg.raw_message.value)

    return seen


def query_audit_event(n, patient="p1", principal="jwt:dr", at=None, address=None):
    """An AuditEvent of the ``n``th `POST /query` by ``principal`` about ``patient``."""
    from datetime import UTC, datetime

    from kernel.audit import audit_event

    return audit_event(
        principal=principal,
        action="E",
        what="POST /query",
        patient=patient,
        resources=[f"Observation/o{n}"],
        outcome="0",
        detail="ok",
        at=at or datetime.now(UTC),
        trace_id=f"t{n}",
        observer="test",
        address=address,
    )


def bulk_export(bundles, folder):
    """One NDJSON file per resource type, as a FHIR Bulk Data `$export` writes them."""
    import json
    from collections import defaultdict

    by_type = defaultdict(list)
    for path in bundles:
        entries = json.loads(path.read_text())["entry"]
        # Synthea links by urn:uuid; an export has Type/id references
        named = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries}
        for entry in entries:
            text = json.dumps(entry["resource"])
            for urn, ref in named.items():
                text = text.replace(f'"{urn}"', f'"{ref}"')
            resource = json.loads(text)
            by_type[resource["resourceType"]].append(resource)
    folder.mkdir()
    for kind, resources in by_type.items():
        (folder / f"{kind}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in resources))
    return folder
