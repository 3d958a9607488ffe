"""Errors raised by decision support."""

from __future__ import annotations

from kernel.errors import ClinstreamError


class RuleInputError(ClinstreamError, ValueError):
    """A resource a rule cannot read (e.g. a value in a unit it cannot convert)."""


class RuleConfigError(ClinstreamError, ValueError):
    """A rule setting that cannot be used (an unknown analyte, a limit that is not a number)."""




