"""Segments are sealed by rows and by age, never on every tiny batch."""

from indexer.app import Flusher, write_plan
from indexer.chunking import plan_batch
from indexer.flush import FlushPolicy
from tests.fakes import FakeEmbedder, MemoryStore
from tests.unit.indexer.fixtures import POTASSIUM, rec


def test_policy_by_rows_and_by_age():
    policy = FlushPolicy(max_rows=10, max_age_s=5.0)
    assert not policy.due(100.0)
    policy.wrote(4, now=100.0)
    assert not policy.due(104.9)
    assert policy.due(105.0)  # the oldest unsealed write is 5 s old
    policy.wrote(6, now=101.0)
    assert policy.due(101.0)  # 10 rows
    policy.flushed()
    assert (policy.pending, policy.since, policy.due(1e9)) == (0, None, False)
    policy.wrote(0, now=200.0)
    assert not policy.due(1e9)


def test_batches_are_acknowledged_writes_sealed_later():
    now = [0.0]
    store = MemoryStore()
    flusher = Flusher(store, FlushPolicy(max_rows=3, max_age_s=5.0), clock=lambda: now[0])
    write_plan(FakeEmbedder(), store, plan_batch([rec([POTASSIUM], 0)]), flusher)
    assert ("flush",) not in store.calls  # 2 rows (one chunk, one retire entry): not yet
    now[0] = 4.0
    assert not flusher.flush_if_due()
    now[0] = 5.0
    assert flusher.flush_if_due()  # by age
    assert store.calls[-1] == ("flush",)
    write_plan(FakeEmbedder(), store, plan_batch([rec([POTASSIUM, {**POTASSIUM, "id": "k2"}], 1)]), flusher)
    assert store.calls[-1] == ("flush",)  # 4 rows: by rows, at once
    flusher.flush_now()
    assert store.calls.count(("flush",)) == 2  # nothing pending, nothing to seal
