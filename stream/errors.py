"""Errors raised by the normalizer (the HL7 v2 errors it raises are the kernel's `Hl7Error` family)."""

from __future__ import annotations

from kernel.errors import ClinstreamError


class InvalidResource(ClinstreamError, ValueError):
    """A resource fhir.resources rejects: the element path and the pydantic error type."""

    def __init__(self, resource_type: str, path: str, error_type: str) -> None:
        super().__init__(f"{resource_type} fails FHIR R4 validation at {path} ({error_type})")
        self.path = path
        self.error_type = error_type
