"""Errors raised by inference."""

from __future__ import annotations

from stream.errors import ClinstreamError


class RuleInputError(ClinstreamError, ValueError):
    """A resource a rule cannot read (e.g. a value in a unit it cannot convert)."""


class RuleConfigError(ClinstreamError, ValueError):
    """A rule setting that cannot be used (an unknown analyte, a limit that is not a number)."""


class ModelRunError(ClinstreamError, RuntimeError):
    """A model failed to run (not the record's fault): the batch is retried, never dead-lettered."""


class ModelNotBuiltError(ClinstreamError, FileNotFoundError):
    """A model directory without its build (`make models` has not run)."""
