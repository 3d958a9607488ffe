"""Errors raised by the connectors."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel.errors import ClinstreamError

if TYPE_CHECKING:
    from connectors.fhir_ingress import Issue


class FramingError(ClinstreamError, ValueError):
    """Bytes on an MLLP connection that do not form a frame (e.g. data before 0x0B)."""


class FrameTooLargeError(FramingError):
    """A frame grew past the configured maximum message size."""


class BrokerUnavailableError(ClinstreamError, ConnectionError):
    """The broker did not confirm a write; the sender must not get a positive ACK."""


class RecordTooLargeError(ClinstreamError, ValueError):
    """An input larger than the broker or producer takes (``max_record_bytes``): refused to its
    sender (HTTP 413, HL7 AR), never retried, since a retry cannot succeed."""


class SenderNotAllowedError(ClinstreamError, PermissionError):
    """A sending facility that is not on the interface's allow-list."""


class DeliveryError(ClinstreamError, RuntimeError):
    """An outbound message or resource that was rejected or could not be delivered."""


class FhirInputError(ClinstreamError, ValueError):
    """FHIR input we refuse, with the HTTP status and the issues to report."""

    def __init__(self, status: int, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.status = status
        self.issues = issues
