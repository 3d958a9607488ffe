"""EHR-facing edges: HL7 v2 over MLLP in (and, later, FHIR REST and outbound clients)."""
