"""Strict structure check of an HL7 v2 message against the standard's definitions (hl7apy).

hl7apy carries the message structures of HL7 v2.1-2.8.2 (segment order, groups, required
segments and fields, datatypes). Parsing with it costs ~50 ms per message, far too slow for
the streaming path, where our own parser reads only what the mappings need; it earns its
place in the offline tool an interface analyst runs (`clinstream convert --check-structure`)
to learn where a feed departs from the standard. Problems are reported without field
values: hl7apy's own text names offending values (``1958XX12 is not an HL7 valid date
value``), so every value of the message found in it (as whole words), and anything
quoted, is replaced by ``…``.
"""

from __future__ import annotations

import re

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

_QUOTED = re.compile(r"""(['"]).*?\1""")
_SEPARATORS = re.compile(r"[|^~\\&\r\n]")


def structure_problems(text: str) -> list[str]:
    """What hl7apy's strict validation finds wrong with the message; [] when it conforms."""
    normalized = text.replace("\r\n", "\r").replace("\n", "\r").lstrip("\ufeff")
    try:
        message = parse_message(normalized, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        message.validate()
    except Exception as exc:  # hl7apy raises its own and builtin types for non-conforming input
        return [f"{type(exc).__name__}: {_scrub(str(exc), normalized)}"[:300]]
    return []


def _without_structure(line: str) -> str:
    if line[:3] != "MSH" or len(line) < 4:
        return line[4:]
    fields = line.split(line[3])
    return line[3].join(f for n, f in enumerate(fields) if n not in (0, 1, 8, 11))


def _scrub(problem: str, text: str) -> str:
    """hl7apy's text with quoted parts and every value of the message (whole words) masked."""
    # Every value of the message except the segment ids and MSH-9/MSH-12 (message type and
    # version), so structure names such as ADT_A01.EVN stay readable.
    content = "\r".join(_without_structure(line) for line in text.split("\r"))
    values = sorted({v for v in _SEPARATORS.split(content) if v.strip()}, key=len, reverse=True)
    unquoted = _QUOTED.sub("…", problem)
    if not values:
        return unquoted
    any_value = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(v) for v in values) + r")(?!\w)")
    return any_value.sub("…", unquoted)
