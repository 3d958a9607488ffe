"""Errors raised by the connectors."""

from __future__ import annotations

from stream.errors import ClinstreamError


class FramingError(ClinstreamError, ValueError):
    """Bytes on an MLLP connection that do not form a frame (e.g. data before 0x0B)."""


class FrameTooLargeError(FramingError):
    """A frame grew past the configured maximum message size."""


class BrokerUnavailableError(ClinstreamError, ConnectionError):
    """The broker did not confirm a write; the sender must not get a positive ACK."""


class SenderNotAllowedError(ClinstreamError, PermissionError):
    """A sending facility that is not on the interface's allow-list."""


class DeliveryError(ClinstreamError, RuntimeError):
    """An outbound message or resource that was rejected or could not be delivered."""
