"""The exception root of clinstream and the normalizer's typed errors.

Errors carry what the edge needs to answer the sender (HL7 table 0357 code, segment,
field, message control id) and never the message content, so they can be logged.
"""

from __future__ import annotations


class ClinstreamError(Exception):
    """Root of every error raised on purpose by clinstream."""


class Hl7Error(ClinstreamError, ValueError):
    """An HL7 v2 message that cannot be accepted as it is.

    Attributes:
        code: HL7 table 0357 message error condition code (e.g. 100, 101, 102, 200).
        segment: segment id where the problem is (``"MSH"``), if known.
        sequence: 1-based occurrence of that segment in the message, if known.
        field: 1-based field number, if known.
        control_id: MSH-10 of the message, if it could be read.
        reject: ``True`` when the message must be refused outright (ACK ``AR``),
            ``False`` for an application error on otherwise readable input (ACK ``AE``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: int,
        segment: str | None = None,
        sequence: int | None = None,
        field: int | None = None,
        control_id: str | None = None,
        reject: bool = False,
    ) -> None:
        super().__init__(message)
        self.reason = message
        self.code = code
        self.segment = segment
        self.sequence = sequence
        self.field = field
        self.control_id = control_id
        self.reject = reject

    @property
    def location(self) -> str:
        """Human readable location such as ``PID-3`` or ``MSH``."""
        if self.segment is None:
            return ""
        return f"{self.segment}-{self.field}" if self.field is not None else self.segment


class Hl7ParseError(Hl7Error):
    """The bytes are not a readable HL7 v2 message (framing, MSH, separators, encoding)."""


class MappingError(Hl7Error):
    """A readable message whose content cannot be turned into valid FHIR R4."""


class UnsupportedMessageError(Hl7Error):
    """A readable message of a type or trigger event the normalizer does not handle."""
