"""Note drafting: `ehr.fhir.v1` → patient charts → grounded draft notes on `notes.drafts.v1`,
clinician review and feedback, draft write-back."""
