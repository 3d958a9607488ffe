"""How clinstream creates its topics: retention by role, compaction for changelogs, and
min.insync.replicas that keeps an acknowledged write on two brokers when there are three."""

import pytest

from kernel.events import Topics, topic_config


@pytest.mark.parametrize(("replicas", "min_isr"), [(1, "1"), (2, "1"), (3, "2"), (5, "2")])
def test_min_insync_replicas_follows_the_replication(replicas, min_isr):
    topics = Topics()
    for name in topics.all():
        assert topic_config(topics, name, replication_factor=replicas)["min.insync.replicas"] == min_isr


def test_retention_by_role_on_prefixed_topics_too():
    topics = Topics().with_prefix("t1.")
    config = {name: topic_config(topics, name, replication_factor=3) for name in topics.all()}
    week = str(7 * 24 * 3600 * 1000)
    assert config[topics.inbound_hl7v2]["retention.ms"] == week
    assert config[topics.outbound_fhir]["retention.ms"] == week
    for kept in (topics.fhir, topics.alerts, topics.feedback, topics.audit, topics.deadletter):
        assert config[kept] == {"min.insync.replicas": "2", "cleanup.policy": "delete", "retention.ms": "-1"}
    changelogs = (
        topics.cds_state,
        topics.cds_cards,
        topics.notes_charts,
        topics.assist_charts,
        topics.unmapped_codes,
        topics.code_mappings,
    )
    for changelog in changelogs:
        assert config[changelog]["cleanup.policy"] == "compact"
    assert sum(c["cleanup.policy"] == "compact" for c in config.values()) == len(changelogs)
