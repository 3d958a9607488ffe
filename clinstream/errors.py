"""Errors raised by the composition root: the embedded runtime and the stage wiring."""

from __future__ import annotations

from kernel.errors import ClinstreamError


class BrokerStartError(ClinstreamError, RuntimeError):
    """The embedded broker did not start or did not answer metadata in time."""


class DashboardStartError(ClinstreamError, RuntimeError):
    """The dashboard process did not come up."""


class ConfigurationError(ClinstreamError, ValueError):
    """Settings that cannot work together."""
