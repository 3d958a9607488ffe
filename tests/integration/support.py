"""Helpers of the integration tests: reading topics until a condition holds, CDS client tokens."""

from __future__ import annotations

import asyncio
import time
import uuid

import jwt
from aiokafka import AIOKafkaConsumer

TOKEN = "integration-token"
CDS_SECRET = "integration-cds-secret-integration-cds-secret"


async def collect(bootstrap, topic, predicate, timeout=30):
    """The records of ``topic`` from its start, read until ``predicate(records)`` holds."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",  # never an aborted transaction's records
    )
    await consumer.start()
    seen = []
    try:
        async with asyncio.timeout(timeout):
            while not predicate(seen):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    seen.extend(records)
    finally:
        await consumer.stop()
    return seen


async def drain(bootstrap, topic, *, seconds):
    """Every record of ``topic`` that can be read within ``seconds``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",  # never an aborted transaction's records
    )
    await consumer.start()
    seen = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                seen.extend(records)
    finally:
        await consumer.stop()
    return seen


def cds_jwt(port, path):
    """The JWT a CDS Hooks client signs for one call to ``path`` on the stack's API port."""
    now = int(time.time())
    claims = {"iss": "https://ehr.test", "aud": f"http://127.0.0.1:{port}{path}", "iat": now, "exp": now + 60}
    return jwt.encode({**claims, "jti": uuid.uuid4().hex}, CDS_SECRET, algorithm="HS256")
