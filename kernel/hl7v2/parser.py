"""A small, fast HL7 v2 parser: text in, segments and fields out, typed errors for bad input.

Pure (no I/O). Shared by the MLLP connector (which needs MSH and the patient identifier
to build ACKs and record keys) and the normalizer (which maps the whole message).
Full-featured parsers (hl7apy) cost ~12 ms per message; a hospital feed needs ~0.5 ms,
so we split on the message's own separators and decode escapes only where a value is read.

Field numbering follows the standard: ``msh.get(9)`` is MSH-9 even though MSH-1 is the
field separator itself.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from kernel.errors import Hl7ParseError, MappingError

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class Separators:
    """The message's own delimiters, read from MSH-1 and MSH-2."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def encoding_characters(self) -> str:
        """MSH-2 as it should be written back (e.g. in an ACK)."""
        return self.component + self.repetition + self.escape + self.subcomponent


class Segment:
    """One segment: ``fields[n]`` is field n (``fields[0]`` is the segment id).

    Fields are split on first use: the MLLP connector reads only MSH and PID of a message
    that may carry hundreds of OBX segments.
    """

    __slots__ = ("_fields", "_line", "name", "seps")

    def __init__(self, name: str, line: str, seps: Separators) -> None:
        self.name = name
        self.seps = seps
        self._line = line
        self._fields: list[str] | None = None

    @property
    def fields(self) -> list[str]:
        """All fields; ``fields[n]`` is field n."""
        if self._fields is None:
            parts = self._line.split(self.seps.field)
            if self.name == "MSH":
                parts.insert(1, self.seps.field)
            self._fields = parts
        return self._fields

    def get(self, n: int) -> str:
        """Raw field n (escapes not decoded, repetitions not split); ``""`` when absent."""
        fields = self._fields if self._fields is not None else self.fields
        return fields[n] if n < len(fields) else ""

    def repetitions(self, n: int) -> list[str]:
        """Raw repetitions of field n (MSH-2 is never split)."""
        fields = self._fields if self._fields is not None else self.fields
        raw = fields[n] if n < len(fields) else ""
        if not raw:
            return []
        if n <= 2 and self.name == "MSH":
            return [raw]
        return raw.split(self.seps.repetition)

    def value(self, n: int, component: int = 1, subcomponent: int = 1, repetition: int = 0) -> str:
        """Decoded text of field n, component, subcomponent, repetition (all 1-based but repetition)."""
        fields = self._fields if self._fields is not None else self.fields
        raw = fields[n] if n < len(fields) else ""
        if not raw:
            return ""
        if self.name != "MSH" or n > 2:
            separator = self.seps.repetition
            if repetition == 0:
                if separator in raw:
                    raw = raw.split(separator, 1)[0]
            else:
                reps = raw.split(separator)
                if repetition >= len(reps):
                    return ""
                raw = reps[repetition]
        elif repetition:
            return ""
        return component_of(raw, self.seps, component, subcomponent)


def component_of(raw: str, seps: Separators, component: int = 1, subcomponent: int = 1) -> str:
    """Decoded component/subcomponent of one raw field repetition."""
    # The hot path of every mapper: split no further than the part asked for.
    if seps.component in raw:
        comps = raw.split(seps.component, component)
        if component > len(comps):
            return ""
        part = comps[component - 1]
    elif component == 1:
        part = raw
    else:
        return ""
    if seps.subcomponent in part:
        subs = part.split(seps.subcomponent, subcomponent)
        if subcomponent > len(subs):
            return ""
        part = subs[subcomponent - 1]
    elif subcomponent != 1:
        return ""
    if part == NULL:
        return ""
    return unescape(part, seps)


# HL7's explicit null (``""``): "this value is now empty". Every resource is published whole
# (a PUT), so an element the sender nulls is simply absent from the new version.
NULL = '""'


def components(raw: str, seps: Separators) -> list[str]:
    """Each component of one raw field repetition, decoded (its first subcomponent).

    ``components(raw)[k - 1]`` equals ``component_of(raw, seps, k)``; splitting once serves
    mappers that read several components of one value (a CWE, an XPN, an XAD).
    """
    sub, esc = seps.subcomponent, seps.escape
    parts = [c.partition(sub)[0] if sub in c else c for c in raw.split(seps.component)]
    return ["" if p == NULL else unescape(p, seps) if esc in p else p for p in parts]


def unescape(value: str, seps: Separators) -> str:
    r"""Decode HL7 escape sequences (\F\ \S\ \T\ \R\ \E\ \.br\ \Xhh\); drop formatting ones."""
    esc = seps.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end == -1:  # lone escape character: keep it literally
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        i = end + 1
        if seq == "F":
            out.append(seps.field)
        elif seq == "S":
            out.append(seps.component)
        elif seq == "T":
            out.append(seps.subcomponent)
        elif seq == "R":
            out.append(seps.repetition)
        elif seq == "E":
            out.append(esc)
        elif seq in (".br", ".BR"):
            out.append("\n")
        elif seq[:1] == "X" and len(seq) > 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode("latin-1"))
            except ValueError:
                out.append(esc + seq + esc)
        elif seq[:1] in ("H", "N", "C", "M", ".") or seq == "":
            continue  # highlighting, character set and formatting commands carry no text
        else:
            out.append(esc + seq + esc)
    return "".join(out)


class Message:
    """A parsed HL7 v2 message. MSH fields every stage reads are decoded once, at parse time."""

    __slots__ = (
        "_by_name",
        "_positions",
        "accept_ack_type",
        "application_ack_type",
        "control_id",
        "message_code",
        "msh",
        "segments",
        "sending_system",
        "seps",
        "trigger_event",
        "version",
    )

    def __init__(self, segments: list[Segment], seps: Separators) -> None:
        self.segments = segments
        self.seps = seps
        self._positions: dict[int, int] | None = None
        self._by_name: dict[str, list[Segment]] | None = None
        self.msh = msh = segments[0]
        self.control_id: str = msh.value(10)
        """MSH-10."""
        self.message_code: str = msh.value(9, 1).upper()
        """MSH-9.1 (ADT, ORU, ...)."""
        self.trigger_event: str = msh.value(9, 2).upper()
        """MSH-9.2 (A01, R01, ...)."""
        self.version: str = msh.value(12)
        """MSH-12.1 (2.3 ... 2.8)."""
        self.sending_system: str = f"{msh.value(3)}^{msh.value(4)}"
        """``application^facility`` from MSH-3 and MSH-4 (namespace ids)."""
        fields = msh.fields
        self.accept_ack_type: str = msh.value(15).upper() if len(fields) > 15 else ""
        """MSH-15 (AL, NE, ER, SU), empty in original acknowledgment mode."""
        self.application_ack_type: str = msh.value(16).upper() if len(fields) > 16 else ""
        """MSH-16."""

    def first(self, name: str) -> Segment | None:
        """The first segment with this id, if any."""
        found = self._index().get(name)
        return found[0] if found else None

    def _index(self) -> dict[str, list[Segment]]:
        # Mappers ask for PID, PV1, ORC... many times per message: index the ids once.
        if self._by_name is None:
            index: dict[str, list[Segment]] = {}
            for seg in self.segments:
                index.setdefault(seg.name, []).append(seg)
            self._by_name = index
        return self._by_name

    def position(self, seg: Segment) -> int:
        """Index of this segment in ``segments`` (by identity), without a linear search."""
        if self._positions is None:
            self._positions = {id(s): i for i, s in enumerate(self.segments)}
        return self._positions[id(seg)]

    def all(self, name: str) -> list[Segment]:
        """Every segment with this id, in order."""
        return list(self._index().get(name, ()))

    @property
    def message_type(self) -> str:
        """``CODE^TRIGGER`` as written in logs and envelopes."""
        return f"{self.message_code}^{self.trigger_event}"


ENVELOPE_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})


@dataclass(frozen=True, slots=True)
class Batch:
    """The messages of one frame or file: one plain message, or an FHS/BHS batch."""

    messages: list[str]
    enveloped: bool  # True when the input had batch/file header or trailer segments


def split_batch(text: str) -> Batch:
    """Split text into messages at each MSH, dropping FHS/BHS/BTS/FTS envelope segments.

    Segments before the first MSH (other than the envelope) start a message of their own,
    so the parser reports them instead of them being silently attached or lost. Each
    message is returned with CR segment terminators.
    """
    messages: list[list[str]] = []
    current: list[str] | None = None
    enveloped = False
    for line in _SEGMENT_SPLIT.split(text.lstrip(BOM + " \t\r\n")):
        if not line.strip():
            continue
        name = line[:3]
        if name in ENVELOPE_SEGMENTS:
            enveloped = True
            current = None
            continue
        if name == "MSH" or current is None:
            current = [line]
            messages.append(current)
        else:
            current.append(line)
    return Batch(["\r".join(m) + "\r" for m in messages], enveloped)


def decode_payload(payload: bytes) -> str:
    """HL7 bytes → text: UTF-8 when valid, else Latin-1 (which never fails).

    MSH-18 names the character set, but senders label it wrongly as often as not; the
    byte-exact original is kept in Kafka either way.
    """
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


@functools.lru_cache(maxsize=512)
def _valid_segment_id(name: str) -> bool:
    # Segment ids repeat (MSH, PID, OBX...): remember the verdict instead of matching each line.
    return _SEGMENT_ID.match(name) is not None


def parse_message(text: str) -> Message:
    """Parse one HL7 v2 message.

    Accepts a leading BOM and CR, LF or CRLF segment terminators; skips blank lines.

    Raises:
        Hl7ParseError: when the text is not a readable HL7 v2 message; ``reject`` is set
            because nothing in it can be trusted.
    """
    text = text.lstrip(BOM + " \t\r\n")
    if not text.startswith("MSH"):
        raise Hl7ParseError("message does not start with an MSH segment", code=100, reject=True)
    if len(text) < 8:
        raise Hl7ParseError("MSH segment too short", code=100, segment="MSH", reject=True)
    fs = text[3]
    if fs.isalnum() or fs.isspace():
        raise Hl7ParseError("invalid field separator in MSH-1", code=102, segment="MSH", field=1, reject=True)
    enc_end = text.find(fs, 4)
    enc = text[4:] if enc_end == -1 else text[4:enc_end]
    enc = _SEGMENT_SPLIT.split(enc, maxsplit=1)[0]
    if (
        len(enc) not in (4, 5)
        or len(set(enc)) != len(enc)
        or fs in enc
        or any(c.isalnum() or c.isspace() for c in enc)
    ):
        raise Hl7ParseError(
            "invalid encoding characters in MSH-2", code=102, segment="MSH", field=2, reject=True
        )
    seps = Separators(fs, enc[0], enc[1], enc[2], enc[3])

    segments: list[Segment] = []
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    for line in text.split("\r"):
        if not line or line.isspace():
            continue
        name = line[:3]
        if (len(line) > 3 and line[3] != fs) or not _valid_segment_id(name):
            raise Hl7ParseError(f"invalid segment id at segment {len(segments) + 1}", code=100, reject=True)
        segments.append(Segment(name, line, seps))
    if segments[0].name != "MSH":  # pragma: no cover - guaranteed by the startswith check
        raise Hl7ParseError("message does not start with an MSH segment", code=100, reject=True)
    return Message(segments, seps)


def check_header(msg: Message) -> None:
    """Validate the MSH fields every receiver needs: message type and control id.

    MSH-11 (processing id) and MSH-12 (version) are required by the standard but missing
    in real feeds often enough that refusing them would stop a go-live; they are read
    when present and never needed to interpret the message.

    Raises:
        Hl7ParseError: with ``reject`` set and the MSH field that is missing.
    """
    control_id = msg.control_id or None
    if not msg.message_code or not msg.trigger_event:
        raise Hl7ParseError(
            "MSH-9 message type is missing",
            code=101,
            segment="MSH",
            sequence=1,
            field=9,
            control_id=control_id,
            reject=True,
        )
    if control_id is None:
        raise Hl7ParseError(
            "MSH-10 message control id is missing",
            code=101,
            segment="MSH",
            sequence=1,
            field=10,
            reject=True,
        )


def patient_identifier(msg: Message) -> tuple[str, str]:
    """The patient's (assigning authority, identifier) from PID-3, else PID-2 or PID-4.

    The authority is CX.4 namespace (or universal id); when the sender leaves it empty,
    MSH-4 (sending facility) stands in, because an MRN only means something within the
    facility that issued it.

    Raises:
        MappingError: code 101 at PID-3 when the message has no PID or no usable identifier.
    """
    pid = msg.first("PID")
    if pid is None:  # ERR names PID-3: the identity the receiver needs, not the segment order
        raise _no_patient(msg, ": the message has no PID segment")
    for field in (3, 2, 4):
        for rep in pid.repetitions(field):
            value = component_of(rep, msg.seps, 1)
            if value.strip():
                authority = (
                    component_of(rep, msg.seps, 4, 1)
                    or component_of(rep, msg.seps, 4, 2)
                    or msg.msh.value(4)
                    or msg.msh.value(3)
                )
                return authority, value
    raise _no_patient(msg, "")


def _no_patient(msg: Message, detail: str) -> MappingError:
    return MappingError(
        f"PID-3 patient identifier is missing{detail}",
        code=101,
        segment="PID",
        sequence=1,
        field=3,
        control_id=msg.control_id or None,
    )
