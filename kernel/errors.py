"""The exception tree of clinstream: one root, the errors several stages raise, and the map.

Errors are raised on purpose and carry what the edge needs to answer (an HL7 table 0357 code,
the segment and field, a control id, an HTTP status), never message content, so they can be
logged. They become outcomes only at the edge: HL7 AE/AR with ERR, FHIR OperationOutcome,
HTTP 4xx, a dead-letter record. Each stage's ``errors.py`` holds the ones only it raises.

    ClinstreamError                          kernel.errors
    ├── Hl7Error (ValueError)                an HL7 v2 message we cannot accept
    │   ├── Hl7ParseError                    unreadable: framing, MSH, separators
    │   ├── MappingError                     readable, but not valid FHIR R4
    │   └── UnsupportedMessageError          a type or event we do not handle
    ├── ModelRunError (RuntimeError)         a model failed to run: retry, never dead-letter
    ├── AuditUnavailableError (ConnectionError)  the audit log did not confirm a write
    ├── PatientRefusedError (PermissionError)  a patient outside a token's facilities
    ├── ModelNotBuiltError (FileNotFoundError)  `make models` has not run
    ├── ReplayError (ValueError)             a dead letter that cannot be replayed
    ├── FramingError (ValueError)            connectors.errors: not an MLLP frame
    │   └── FrameTooLargeError               past the maximum message size
    ├── BrokerUnavailableError (ConnectionError)  connectors.errors: no broker confirmation
    ├── RecordTooLargeError (ValueError)     connectors.errors: an input over max_record_bytes
    ├── SenderNotAllowedError (PermissionError)   connectors.errors: not on the allow-list
    ├── DeliveryError (RuntimeError)         connectors.errors: outbound refused or undelivered
    ├── FhirInputError (ValueError)          connectors.errors: FHIR input refused (status, issues)
    ├── InvalidResource (ValueError)         stream.errors: fhir.resources rejects a resource
    ├── VectorStoreError (ConnectionError)   indexer.errors: Milvus refused a write or search
    ├── RuleInputError (ValueError)          a resource a rule cannot read (kernel.analytes)
    ├── RuleConfigError (ValueError)         inference.cds.errors: an unusable rule setting
    ├── LoginConfigError (ValueError)        dashboard.errors: an unusable configured login
    ├── SourceUnavailableError (ConnectionError)  dashboard.errors: a reading it could not make
    ├── ToolError                            agents.errors: an agent tool call refused (status)
    ├── BrokerStartError (RuntimeError)      clinstream.errors: the embedded broker did not start
    ├── DashboardStartError (RuntimeError)   clinstream.errors: the dashboard did not start
    └── ConfigurationError (ValueError)      clinstream.errors: settings that cannot work together
"""

from __future__ import annotations


class ClinstreamError(Exception):
    """Root of every error raised on purpose by clinstream."""


class RuleInputError(ClinstreamError, ValueError):
    """A resource a rule cannot read (e.g. a value in a unit it cannot convert)."""


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


class ModelRunError(ClinstreamError, RuntimeError):
    """A model failed to run (not the record's fault): the batch is retried, never dead-lettered."""


class ModelNotBuiltError(ClinstreamError, FileNotFoundError):
    """A model directory without its build (`make models` has not run)."""


class ReplayError(ClinstreamError, ValueError):
    """A replay that cannot be made (an edited message that does not parse, say)."""


class AuditUnavailableError(ClinstreamError, ConnectionError):
    """The audit log did not confirm a write: the access it records must not happen."""


class PatientRefusedError(ClinstreamError, PermissionError):
    """A token may not see the patient a request names (its facility claim): a 403.

    Attributes:
        detail: why, without the patient's identifiers.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
