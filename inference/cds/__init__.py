"""Decision support: `ehr.fhir.v1` → per-patient state → versioned rules and ONNX risk models →
`cds.alerts.v1`, CDS Hooks cards and alert write-back."""
