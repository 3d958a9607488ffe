"""How the stateful stages start: refused when a patient's records and state could land in
different partitions; after an upgrade from the version that kept decision support's state only
in SQLite, that state moved into the changelog, so an alert raised before the upgrade is still
current afterwards and served by any instance."""

import sqlite3
from datetime import UTC, datetime

import httpx
import pytest

from clinstream.errors import ConfigurationError
from clinstream.runtime import ensure_topics
from inference.cds.rules import RuleSet, process
from tests.integration.support import TOKEN, collect
from tests.unit.inference.cds.fixtures import obs, record


async def test_the_first_start_moves_the_earlier_sqlite_state_into_the_changelog(
    start_stack, tmp_path, broker, topics
):
    now = datetime.now(UTC)
    potassium = record(obs("2823-3", 6.6, "mmol/L", at=now), patient="p-upgrade", at=now)
    outcome = process(None, potassium, RuleSet(), now=now)
    [alert] = outcome.alerts
    legacy = tmp_path / "cds" / "state.sqlite"
    legacy.parent.mkdir(parents=True)
    with sqlite3.connect(legacy) as db:  # the earlier version's table, as it wrote it
        db.execute("CREATE TABLE patient_state (patient_id TEXT PRIMARY KEY, state TEXT NOT NULL)")
        db.execute("INSERT INTO patient_state VALUES (?, ?)", ("p-upgrade", outcome.state.model_dump_json()))

    async with start_stack() as stack:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{stack.http_port}", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            current = (await http.get("/cds/alerts/p-upgrade")).json()["alerts"]
        [moved] = await collect(broker.bootstrap, topics.cds_state, lambda seen: len(seen) >= 1)
    assert [a["id"] for a in current] == [alert.id]
    assert moved.key == b"p-upgrade"
    with sqlite3.connect(legacy) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "patient_state" not in tables  # moved once


async def test_a_stateful_stage_refuses_topics_that_are_not_co_partitioned(start_stack, broker, topics):
    await ensure_topics(broker.bootstrap, [topics.feedback], partitions=2, replication_factor=1)
    with pytest.raises(ConfigurationError, match="same partition count"):
        async with start_stack():
            pass
