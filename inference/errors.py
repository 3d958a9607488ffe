"""Errors raised by inference."""

from __future__ import annotations

from stream.errors import ClinstreamError


class RuleInputError(ClinstreamError, ValueError):
    """A resource a rule cannot read (e.g. a value in a unit it cannot convert)."""
