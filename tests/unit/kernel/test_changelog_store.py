"""The local replica of a changelog topic: newest offset wins per key, the owner's confirmed
writes always apply, positions only move forward, a partition can be dropped and read again."""

import pytest

from kernel.changelog_store import ChangelogTable, Entry


def test_a_record_read_back_applies_only_when_newer_than_what_the_key_holds(tmp_path):
    table = ChangelogTable(tmp_path / "t.sqlite", "state")
    assert table.apply([Entry("p1", b"v2", 0, 5)], own=True) == ["p1"]  # the owner's write, confirmed
    # The reader then delivers the older record and the same one again: neither changes the value.
    assert table.apply([Entry("p1", b"v1", 0, 3), Entry("p1", b"v2", 0, 5)], {0: 6}) == []
    assert table.get("p1") == b"v2"
    assert table.apply([Entry("p1", b"v3", 0, 7), Entry("p2", b"w", 1, 0)], {0: 8, 1: 1}) == ["p1", "p2"]
    assert table.get_many(["p1", "p2", "nobody"]) == {"p1": b"v3", "p2": b"w"}
    assert table.positions() == {0: 8, 1: 1}


def test_positions_never_move_back_and_a_tombstone_deletes(tmp_path):
    table = ChangelogTable(tmp_path / "t.sqlite", "state")
    table.apply([Entry("p1", b"v", 0, 1)], {0: 10})
    table.apply([], {0: 4})
    assert table.positions() == {0: 10}
    table.apply([Entry("p1", None, 0, 11)], {0: 12})
    assert table.get("p1") is None
    assert table.count() == 0


def test_a_failed_batch_changes_nothing(tmp_path):
    table = ChangelogTable(tmp_path / "t.sqlite", "state")
    table.apply([Entry("p1", b"old", 0, 1)], {0: 2})
    broken = [Entry("p1", b"new", 0, 3), Entry("p2", b"x", 0, None)]  # NOT NULL offset
    with pytest.raises(Exception, match="NOT NULL"):
        table.apply(broken, {0: 4})
    assert (table.get("p1"), table.get("p2"), table.positions()) == (b"old", None, {0: 2})


def test_reset_drops_a_partition_and_two_tables_share_a_file(tmp_path):
    path = tmp_path / "t.sqlite"
    states, cards = ChangelogTable(path, "state"), ChangelogTable(path, "cards")
    states.apply([Entry("p1", b"a", 0, 0), Entry("p2", b"b", 1, 0)], {0: 1, 1: 1})
    cards.apply([Entry("c1", b"x", 0, 0)], {0: 1})
    assert sorted(states.reset([1])) == ["p2"]
    assert states.with_prefix("") == [("p1", b"a")]
    assert states.positions() == {0: 1}
    assert cards.with_prefix("c") == [("c1", b"x")]
    states.close()
    reopened = ChangelogTable(path, "state")
    assert (reopened.get("p1"), reopened.positions()) == (b"a", {0: 1})


def test_table_names_must_be_identifiers(tmp_path):
    with pytest.raises(ValueError, match="identifier"):
        ChangelogTable(tmp_path / "t.sqlite", "x; DROP TABLE y")


def test_a_deletion_read_back_from_the_topic_is_a_deletion_not_an_empty_value(tmp_path):
    """FastStream publishes a tombstone as an empty value: read back (a restore after a
    rebalance re-reads the owner's own records), it must delete, never store b"" that a reader
    then fails to decode."""
    table = ChangelogTable(tmp_path / "t.sqlite", "chart")
    table.apply([Entry("p1|Observation/a", b"{}", 0, 3)], own=True)
    table.apply([Entry("p1|Observation/a", None, 0, 4)], own=True)
    assert table.apply([Entry("p1|Observation/a", b"", 0, 4)], {0: 5}) == []
    assert table.with_prefix("p1|") == []
    table.apply([Entry("p2|Observation/b", b"{}", 0, 6)], {0: 7})
    table.apply([Entry("p2|Observation/b", b"", 0, 8)], {0: 9})
    assert table.count() == 0
