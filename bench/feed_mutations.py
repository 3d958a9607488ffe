"""What real feeds do to HL7 v2 messages, as seeded mutations of corpus messages.

Used by `bench/robustness.py` (seeded, reproducible figures) and by the normalizer's
Hypothesis tests (which hand in a Hypothesis-controlled ``random.Random``). Each mutation
is one a sender really makes:

* **retime**: a timestamp field rewritten in another HL7 DTM precision (``YYYY`` …
  ``YYYYMMDDHHMMSS.SSSS``), with or without a UTC offset, or in a form real senders write
  (ISO 8601, milliseconds without the dot, ``+hh:mm``, zeros for an unknown month or day);
* **retype**: an OBX value type the sender uses and the mapper may not know (XAD, XTN, CX,
  TM, IS, NR, CQ, MO, an empty OBX-2, a private type), with a value of that type's shape;
* **repeat-order**: an OBR and its OBX copied under the same filler number, as case
  notifications and multi-panel reports do.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta, timezone

# Fields that carry a DTM/TS/DT value, per segment (1-based field numbers).
TIME_FIELDS: dict[str, tuple[int, ...]] = {
    "MSH": (7,),
    "EVN": (2, 6),
    "PID": (7, 29),
    "PV1": (44, 45),
    "ORC": (9, 15),
    "OBR": (6, 7, 8, 14, 22),
    "OBX": (12, 14, 19),
    "SPM": (17, 18),
    "RXA": (3, 4),
    "TXA": (4, 6, 7),
    "AL1": (6,),
    "DG1": (5,),
    "PRB": (2, 7),
}

HL7_PRECISIONS = (4, 6, 8, 10, 12, 14)


def dtm_forms(when: datetime) -> list[str]:
    """``when`` in every HL7 DTM precision and offset form, and the deviations senders write."""
    digits = when.strftime("%Y%m%d%H%M%S")
    offsets = ("", "+0000", "-0500", "+0530")
    forms = [digits[:n] + off for n in HL7_PRECISIONS for off in (offsets if n >= 10 else ("",))]
    fraction = str(when.microsecond).zfill(6)
    forms += [f"{digits}.{fraction[:n]}{off}" for n in (1, 2, 3, 4) for off in offsets]
    forms += [
        when.strftime("%Y-%m-%d"),
        when.strftime("%Y-%m-%dT%H:%M:%S"),
        when.strftime("%Y-%m-%dT%H:%M:%S") + "Z",
        when.strftime("%Y-%m-%d %H:%M"),
        when.strftime("%Y-%m-%dT%H:%M:%S.") + str(when.microsecond).zfill(6)[:3] + "-05:00",
        digits + str(when.microsecond).zfill(6)[:3],  # milliseconds without the dot
        digits + "+05:30",
        digits + "-05",
        digits[:4] + "0000",  # unknown month and day
        digits[:6] + "00",  # unknown day
    ]
    return forms


# Value types and a value of each one's shape ({c} is the component separator).
OBX_VALUES: dict[str, str] = {
    "XAD": "12 MAIN ST{c}{c}SPRINGFIELD{c}IL{c}62701{c}USA",
    "XTN": "{c}PRN{c}PH{c}{c}{c}217{c}5550123",
    "CX": "A123456{c}{c}{c}STATELAB",
    "XPN": "DOE{c}JANE{c}Q",
    "XCN": "1234{c}SMITH{c}JOHN",
    "XON": "STATE PUBLIC HEALTH LAB",
    "TM": "1330",
    "IS": "Y",
    "ID": "N",
    "NR": "10{c}20",
    "CQ": "5{c}mL",
    "MO": "12.50{c}USD",
    "": "POSITIVE",
    "ZZ": "PRIVATE VALUE",
}


def retime(segments: list[str], rng: random.Random) -> str:
    """Rewrite one timestamp field in another form; returns the form's description."""
    spots = [
        (i, f)
        for i, seg in enumerate(segments)
        for f in TIME_FIELDS.get(seg[:3], ())
        if i > 0 and _field(seg, f).strip()
    ]
    if not spots:
        return "none"
    at, number = rng.choice(spots)
    base = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(0, 6 * 365 * 86400))
    base = base.replace(microsecond=rng.randrange(0, 1_000_000)).astimezone(timezone(timedelta(hours=-5)))
    form = rng.choice(dtm_forms(base))
    segments[at] = _with_field(segments[at], number, form)
    return f"{segments[at][:3]}-{number}"


def retype(segments: list[str], rng: random.Random) -> str:
    """Give one OBX another value type, with a value of its shape."""
    spots = [i for i, seg in enumerate(segments) if seg.startswith("OBX")]
    if not spots:
        return "none"
    at = rng.choice(spots)
    kind = rng.choice(sorted(OBX_VALUES))
    segments[at] = _with_field(_with_field(segments[at], 2, kind), 5, OBX_VALUES[kind].format(c="^"))
    return kind or "(empty)"


def repeat_order(segments: list[str], rng: random.Random) -> str:
    """Copy an OBR (with the OBX under it) right after its group, same filler number, new set id."""
    starts = [i for i, seg in enumerate(segments) if seg.startswith("OBR")]
    if not starts:
        return "none"
    start = rng.choice(starts)
    end = start + 1
    while end < len(segments) and segments[end][:3] in ("OBX", "NTE", "SPM"):
        end += 1
    copy = segments[start:end]
    copy[0] = _with_field(copy[0], 1, str(len(starts) + 1))
    code = _field(copy[0], 4)
    copy[0] = _with_field(copy[0], 4, "99999-9^Second panel^LN" if rng.random() < 0.5 else code)
    segments[end:end] = copy
    return "OBR"


MUTATIONS = {"retime": retime, "retype": retype, "repeat-order": repeat_order}


def mutate(text: str, rng: random.Random, kind: str | None = None) -> tuple[str, str]:
    """One mutation of ``text`` (a random kind unless named): (new text, what changed)."""
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    name = kind or rng.choice(sorted(MUTATIONS))
    where = MUTATIONS[name](segments, rng)
    return "\r".join(segments) + "\r", f"{name}:{where}"


def _field(segment: str, number: int) -> str:
    fields = segment.split("|")
    index = number - 1 if segment.startswith("MSH") else number
    return fields[index] if index < len(fields) else ""


def _with_field(segment: str, number: int, value: str) -> str:
    fields = segment.split("|")
    index = number - 1 if segment.startswith("MSH") else number
    while len(fields) <= index:
        fields.append("")
    fields[index] = value
    return "|".join(fields)
