"""The streaming normalizer: HL7 v2 and FHIR input on `ehr.inbound.*` → validated FHIR R4 on `ehr.fhir.v1`.

Pure mappers (`adt`, `oru`, `orders`, …, `normalize`) behind one FastStream adapter (`app`).
The mappers may run compiled (`kernel.native`); importing this package stays cheap (no
FastStream, Kafka or model library).
"""

from __future__ import annotations

from kernel.native import NATIVE, use_compiled

use_compiled(__name__, __path__)

__all__ = ["NATIVE"]
