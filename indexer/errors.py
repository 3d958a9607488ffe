"""Errors raised by the indexer."""

from __future__ import annotations

from kernel.errors import ClinstreamError


class VectorStoreError(ClinstreamError, ConnectionError):
    """Milvus did not accept a write or a search."""
