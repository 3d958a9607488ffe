"""HL7 v2 timestamps (DTM, TS, DT) as FHIR dates and dateTimes: the one parser every segment uses.

The standard's form is ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``, every precision
allowed. Real senders also write forms the standard does not, which are still unambiguous,
and those are read too:

* ISO 8601 (``2020-03-04``, ``2020-03-04T10:20:30.123-05:00``, a space instead of ``T``);
* a fraction without its dot (``20170403011212000``: fourteen digits and milliseconds);
* a fraction longer than four digits, offsets with a colon or hours only (``+05:30``,
  ``+05``) and ``Z``;
* zeros for an unknown month or day (``19600000`` is 1960; ``19600300`` is March 1960);
* a slashed date (``MM/DD/YYYY``) whose day is over 12, so it can be read one way only.

Anything else is refused with a reason: *ambiguous* when the value could be read two ways
(an odd digit count such as ``201501011``, or ``03/04/2020``), *malformed* when it is no date
at all. With a data-quality collector active (`kernel.quality.collecting`), the refusal
becomes an issue and the field is left out; otherwise it raises `MappingError` (102).
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from kernel.errors import MappingError
from kernel.quality import AMBIGUOUS_TIMESTAMP, MALFORMED_TIMESTAMP, tolerate

_HL7 = re.compile(r"^(?P<digits>\d{4,})(?:\.(?P<f>\d+))?\s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$")
_ISO = re.compile(
    r"^(?P<y>\d{4})-(?P<mo>\d{2})(?:-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d+))?)?)?)?"
    r"\s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$"
)
_SLASHED = re.compile(
    r"^(?P<a>\d{1,2})/(?P<b>\d{1,2})/(?P<y>\d{4})(?:[ T](?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?)?$"
)


class DtmError(ValueError):
    """A timestamp that cannot be read; ``kind`` is the data-quality issue code."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@functools.lru_cache(maxsize=64)
def _offset_zone(offset: str) -> timezone:
    """``Z``, ``+hh``, ``+hhmm`` or ``+hh:mm`` as a fixed zone (a feed uses a handful)."""
    if offset == "Z":
        return UTC
    digits = offset[1:].replace(":", "")
    hh, mm = int(digits[:2]), int(digits[2:4] or 0)
    if hh > 23 or mm > 59:
        raise DtmError(MALFORMED_TIMESTAMP)
    sign = 1 if offset[0] == "+" else -1
    return timezone(sign * timedelta(hours=hh, minutes=mm))


def _parts_of(value: str) -> tuple[str, str | None, str | None, str | None, str | None, str | None, str, str]:
    """(year, month, day, hour, minute, second, fraction, offset) of any accepted form."""
    # ISO first: ``2025-03`` is March 2025, not the year 2025 at UTC-3.
    m = _ISO.match(value) if value[4:5] == "-" else None
    if m is not None:
        return m["y"], m["mo"], m["d"], m["h"], m["mi"], m["s"], m["f"] or "", m["tz"] or ""
    m = _HL7.match(value)
    if m is not None:
        digits, frac, offset = m["digits"], m["f"] or "", m["tz"] or ""
        if len(digits) > 14 and not frac and len(digits) <= 18:
            digits, frac = digits[:14], digits[14:]  # fraction sent without its dot
        if len(digits) % 2 or len(digits) > 14:
            raise DtmError(AMBIGUOUS_TIMESTAMP)  # 9, 11, 13 digits: which part is short?
        pairs: list[str | None] = [digits[i : i + 2] for i in range(4, len(digits), 2)]
        pairs += [None] * (5 - len(pairs))
        return digits[:4], pairs[0], pairs[1], pairs[2], pairs[3], pairs[4], frac, offset
    m = _SLASHED.match(value)
    if m is not None:
        first, second = int(m["a"]), int(m["b"])
        if first > 12 >= second:
            month, day = second, first
        elif second > 12 >= first or first == second:
            month, day = first, second
        else:
            raise DtmError(AMBIGUOUS_TIMESTAMP)  # 03/04/2020: March 4 or 3 April?
        hour = f"{int(m['h']):02d}" if m["h"] else None
        return m["y"], f"{month:02d}", f"{day:02d}", hour, m["mi"], m["s"], "", ""
    raise DtmError(MALFORMED_TIMESTAMP)


def read_dtm(value: str, tz: ZoneInfo | tzinfo) -> str:
    """One timestamp (already stripped, not empty) as a FHIR date or dateTime.

    A value with a time and no offset is read in ``tz`` (the hospital's zone); FHIR requires
    an offset whenever a time is given. A date keeps its precision and drops any offset.

    Raises:
        DtmError: the value cannot be read, or can be read two ways.
    """
    y, mo, d, h, mi, s, frac, offset = _parts_of(value)
    try:
        if mo == "00" and d in (None, "00") and h is None:
            return y  # unknown month (and day), sent as zeros
        if d == "00" and h is None:
            d = None  # unknown day, sent as zeros
        if h is None:
            if mo is None:
                return y
            if d is None:
                if not 1 <= int(mo) <= 12:
                    raise DtmError(MALFORMED_TIMESTAMP)
                return f"{y}-{mo}"
            return date(int(y), int(mo), int(d)).isoformat()
        if mo is None or d is None:
            raise DtmError(MALFORMED_TIMESTAMP)
        micro = int((frac + "000000")[:6]) if frac else 0
        zone: tzinfo = _offset_zone(offset) if offset else tz
        stamped = datetime(int(y), int(mo), int(d), int(h), int(mi or 0), int(s or 0), micro, tzinfo=zone)
    except DtmError:
        raise
    except ValueError as exc:  # a day, hour or minute out of range
        raise DtmError(MALFORMED_TIMESTAMP) from exc
    return stamped.isoformat(timespec="milliseconds" if frac else "seconds")


def to_fhir_datetime(value: str, tz: ZoneInfo, *, segment: str, field: int) -> str | None:
    """An HL7 v2 timestamp field as a FHIR date/dateTime; None when empty or unreadable.

    Raises:
        MappingError: code 102 for a value that cannot be read, unless a data-quality
            collector is active, which records it (`kernel.quality`) and gets None.
    """
    value = value.strip()
    if not value or value == '""':
        return None
    try:
        return read_dtm(value, tz)
    except DtmError as exc:
        word = "ambiguous" if exc.kind == AMBIGUOUS_TIMESTAMP else "malformed"
        error = MappingError(f"{word} timestamp in {segment}-{field}", code=102, segment=segment, field=field)
        tolerate(error, exc.kind)
        return None
