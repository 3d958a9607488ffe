"""Errors raised by the ops dashboard."""

from __future__ import annotations

from kernel.errors import ClinstreamError


class LoginConfigError(ClinstreamError, ValueError):
    """A configured login that cannot be used (unknown role, malformed hash)."""


class SourceUnavailableError(ClinstreamError, ConnectionError):
    """A reading the dashboard could not make (API, metrics endpoint or Kafka down)."""
