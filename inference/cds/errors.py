"""Errors raised by decision support."""

from __future__ import annotations

from kernel.errors import ClinstreamError


class RuleConfigError(ClinstreamError, ValueError):
    """A rule setting that cannot be used (an unknown analyte, a limit that is not a number)."""
