"""When to seal what was written to Milvus: after enough rows, or once the oldest unsealed
write is old enough.

Writes are searchable and durable once Milvus acknowledges them (the indexer commits its
offsets then), but they sit in growing segments, which Milvus searches by brute force, slowly
on Milvus Lite. Sealing (flush) after every small batch makes many tiny segments instead.
The policy seals by rows (search latency stays flat under load) and by age (a quiet feed
is still sealed soon). Pure; the indexer's `Flusher` applies it under a lock.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FlushPolicy:
    """Rows written since the last flush, and when the first of them was written."""

    max_rows: int
    max_age_s: float
    pending: int = 0
    since: float | None = None

    def wrote(self, rows: int, now: float) -> None:
        """Record ``rows`` written (upserted or deleted) at time ``now``."""
        if rows <= 0:
            return
        self.pending += rows
        if self.since is None:
            self.since = now

    def due(self, now: float) -> bool:
        """Whether a flush is due at time ``now``."""
        if not self.pending:
            return False
        return self.pending >= self.max_rows or (
            self.since is not None and now - self.since >= self.max_age_s
        )

    def flushed(self) -> None:
        """Everything written so far is sealed."""
        self.pending, self.since = 0, None
