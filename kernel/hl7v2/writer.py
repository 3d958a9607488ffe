"""The one HL7 v2 writer: every message clinstream sends (ACKs, alert ORUs, draft MDMs) is
built here. Pure.

Fields are passed encoded: text goes through `escape` (or `components`, which escapes each
part), and a field copied from an inbound message is passed as it was read. Timestamps have
one format, `timestamp` (DTM to the second with the UTC offset). Segments end with CR.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime

from kernel.hl7v2.parser import Separators

DEFAULT = Separators()
"""``|^~\\&``: the separators of every message we originate."""


def escape(text: str, seps: Separators = DEFAULT) -> str:
    """Encode ``text`` for a field: delimiters become escape sequences, line breaks spaces."""
    if text.isalnum():
        return text
    if not any(
        c in text
        for c in (seps.field, seps.component, seps.repetition, seps.subcomponent, seps.escape, "\r", "\n")
    ):
        return text
    esc = seps.escape
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in (
        (seps.field, "F"),
        (seps.component, "S"),
        (seps.repetition, "R"),
        (seps.subcomponent, "T"),
    ):
        out = out.replace(ch, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def components(parts: Sequence[str], seps: Separators = DEFAULT) -> str:
    """A composite field from text parts, each escaped (``code^text^system``)."""
    return seps.component.join(escape(p, seps) for p in parts)


@functools.lru_cache(maxsize=8)
def _second(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%S%z")


def timestamp(when: datetime) -> str:
    """``when`` as an HL7 v2 DTM to the second, with its UTC offset (``20240301143000+0100``)."""
    return _second(when.replace(microsecond=0))


def segment(name: str, fields: Sequence[str], seps: Separators = DEFAULT) -> str:
    """One segment from encoded fields (``fields[0]`` is field 1)."""
    return seps.field.join([name, *fields])


def msh(
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    at: datetime,
    message_type: Sequence[str],
    control_id: str,
    processing_id: str = "P",
    version: str = "2.5.1",
    seps: Separators = DEFAULT,
) -> str:
    """The MSH segment, fields 3-12 encoded as given; MSH-9 from its parts (``ORU^R01^ORU_R01``)."""
    return seps.field.join(
        [
            "MSH",
            seps.encoding_characters,
            sending_application,
            sending_facility,
            receiving_application,
            receiving_facility,
            timestamp(at),
            "",
            seps.component.join(message_type),
            control_id,
            processing_id,
            version,
        ]
    )


def our_msh(
    application: str,
    receiving_application: str,
    receiving_facility: str,
    *,
    at: datetime,
    message_type: Sequence[str],
    control_id: str,
) -> str:
    """The MSH of a message clinstream originates (v2.5.1, production): ``application`` names
    both MSH-3 and MSH-4; the names are text and escaped here."""
    return msh(
        sending_application=escape(application),
        sending_facility=escape(application),
        receiving_application=escape(receiving_application),
        receiving_facility=escape(receiving_facility),
        at=at,
        message_type=message_type,
        control_id=control_id,
    )


def message(segments: Sequence[str]) -> bytes:
    """The message's bytes: segments each ended by CR, UTF-8."""
    return ("\r".join(segments) + "\r").encode("utf-8")
