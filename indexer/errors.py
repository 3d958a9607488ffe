"""Errors raised by the indexer."""

from __future__ import annotations

from stream.errors import ClinstreamError


class ModelNotBuiltError(ClinstreamError, FileNotFoundError):
    """The ONNX model files are missing: run `make models`."""


class VectorStoreError(ClinstreamError, ConnectionError):
    """Milvus did not accept a write or a search."""
