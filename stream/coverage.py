"""What of an HL7 v2 message the mappings do not read: the unmapped segment/field report.

Pure functions. ``MAPPED`` lists, per segment, the fields some mapper reads; everything
else that carries a value is reported (``ZPI`` for a whole segment, ``PID-10`` for a
field), so a Z-segment or an unexpected field is counted, never silently lost. The report
travels with the normalized record (`FhirRecord.unmapped`) and feeds the
``clinstream_unmapped`` metric per message type. When a mapper starts reading a field,
add it here; the table is kept by hand, so a field listed here but not read would hide
content (reviewers: check both sides).
"""

from __future__ import annotations

import functools

from kernel.hl7v2.parser import Message


def _f(*fields: int) -> frozenset[int]:
    return frozenset(fields)


# Field 1 is listed where it is a set id (structure, not content).
MAPPED: dict[str, frozenset[int]] = {
    # Envelope: separators, sender/receiver, time, type, control id, processing id,
    # version and acknowledgment types are read by the connector and the envelope.
    "MSH": _f(1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 15, 16),
    "EVN": _f(2, 6),
    "PID": _f(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 16, 19, 20, 22, 29, 30),
    "PD1": _f(3, 4),
    "NK1": _f(1, 2, 3, 4, 5, 6, 15),
    "PV2": _f(3),
    "PR1": _f(1, 3, 4, 5),
    "IN1": _f(1, 2, 3, 4, 12, 13, 17, 36, 49),
    "PDA": _f(1),
    "PV1": _f(1, 2, 3, 7, 8, 9, 17, 19, 44, 45),
    "MRG": _f(1),
    "AL1": _f(1, 2, 3, 4, 5, 6),
    "DG1": _f(1, 3, 4, 5, 6),
    "OBX": _f(1, 2, 3, 4, 5, 6, 7, 8, 11, 14),
    "OBR": _f(1, 2, 3, 4, 5, 7, 16, 22, 24, 25, 31),
    "ORC": _f(1, 2, 3, 4, 5, 7, 9, 12),
    "SPM": _f(1, 2, 4, 8, 17, 18),
    "TQ1": _f(1, 3, 7, 8, 9),
    "TXA": _f(1, 2, 4, 6, 12, 13, 17),
    "PRB": _f(1, 3, 4, 7, 9, 13, 14, 16),
    "RXA": _f(3, 5, 6, 7, 9, 15, 16, 18, 20, 21),
    "RXR": _f(1, 2),
    "RXE": _f(1, 2, 3, 5, 7, 10, 11, 12, 15, 27),
    "RXO": _f(1, 2, 4, 7, 20),
    "RXD": _f(1, 2, 3, 4, 5, 7),
    "SCH": _f(1, 2, 7, 8, 9, 10, 11, 25),
    "AIS": _f(1, 3, 4),
    "AIG": _f(1, 3, 8, 14),
    "AIL": _f(1, 3, 6, 12),
    "AIP": _f(1, 3, 6, 12),
    "RGS": _f(1),
}
# Where a message type reads a segment differently from the table above.
_BY_MESSAGE: dict[str, dict[str, frozenset[int]]] = {
    # MDM: OBX lines are the note's text; their codes and times are not mapped.
    "MDM": {"OBX": _f(1, 2, 5)},
    # RAS: an administration reads RXA's order-level fields (sub-ids, amount, status).
    "RAS": {"RXA": _f(1, 2, 3, 4, 5, 6, 7, 20)},
}
# NTE segments are read as notes of these segments (the nearest non-NTE before them).
_NOTE_HOSTS = frozenset({"OBR", "OBX", "SCH", "TQ1"})


def unmapped(msg: Message) -> dict[str, int]:
    """Counts of unmapped segments (``"ZPI"``) and non-empty unmapped fields (``"PID-10"``)."""
    table = MAPPED
    override = _BY_MESSAGE.get(msg.message_code)
    if override:
        table = {**MAPPED, **override}
    out: dict[str, int] = {}
    seps = msg.seps
    blank = seps.component + seps.repetition + seps.subcomponent + " "
    host = ""
    for seg in msg.segments:
        name = seg.name
        if name == "NTE":
            if host not in _NOTE_HOSTS:
                out["NTE"] = out.get("NTE", 0) + 1
            continue
        host = name
        mapped = table.get(name)
        if mapped is None:
            out[name] = out.get(name, 0) + 1
            continue
        fields = seg.fields
        for n in _unread(mapped, len(fields)):
            raw = fields[n]
            if raw and raw.strip(blank):
                key = f"{name}-{n}"
                out[key] = out.get(key, 0) + 1
    return out


@functools.lru_cache(maxsize=1024)
def _unread(mapped: frozenset[int], count: int) -> tuple[int, ...]:
    """Field numbers 1..count-1 that ``mapped`` does not list."""
    return tuple(n for n in range(1, count) if n not in mapped)


def z_segments(report: dict[str, int]) -> int:
    """How many Z-segments (site-defined) a report counts."""
    return sum(n for key, n in report.items() if key.startswith("Z"))
