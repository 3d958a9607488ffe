"""Errors raised by the agent tools."""

from __future__ import annotations

from kernel.errors import ClinstreamError


class ToolError(ClinstreamError):
    """A tool call that cannot be answered; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
