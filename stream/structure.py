"""Strict structure check of an HL7 v2 message against the standard's definitions (hl7apy).

hl7apy carries the message structures of HL7 v2.1-2.8.2 (segment order, groups, required
segments and fields, datatypes). Parsing with it costs ~50 ms per message, far too slow for
the streaming path, where our own parser reads only what the mappings need; it earns its
place in the offline tool an interface analyst runs (`clinstream convert --check-structure`)
to learn where a feed departs from the standard. Problems are reported without field
values: a quoted value in hl7apy's text is replaced by ``…``.
"""

from __future__ import annotations

import re

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

_QUOTED = re.compile(r"""(['"]).*?\1""")


def structure_problems(text: str) -> list[str]:
    """What hl7apy's strict validation finds wrong with the message; [] when it conforms."""
    normalized = text.replace("\r\n", "\r").replace("\n", "\r").lstrip("\ufeff")
    try:
        message = parse_message(normalized, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        message.validate()
    except Exception as exc:  # hl7apy raises its own and builtin types for non-conforming input
        return [f"{type(exc).__name__}: {_QUOTED.sub('…', str(exc))}"[:300]]
    return []
