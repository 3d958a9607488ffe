"""HL7 v2 acknowledgements (ACK with MSA and, for errors, ERR). Pure functions.

An ACK mirrors the inbound MSH: sender and receiver swap, the trigger event and version
are echoed, and MSA-2 carries the inbound control id. Error details use HL7 table 0357
codes and a location (ERR-2 for v2.5+, ERR-1 for older versions) but never quote
message content.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from kernel.errors import Hl7Error
from kernel.hl7v2.parser import Message, Separators
from kernel.hl7v2.writer import DEFAULT, escape, message, msh, segment, timestamp

AckCode = Literal["AA", "AE", "AR", "CA", "CE", "CR"]

ERROR_TEXT = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}


@dataclass(frozen=True, slots=True)
class Receiver:
    """Who we are in the ACK's MSH-3/MSH-4."""

    application: str = "CLINSTREAM"
    facility: str = "CLINSTREAM"


def build_ack(
    msg: Message | None,
    code: AckCode,
    *,
    ack_control_id: str,
    now: datetime,
    receiver: Receiver,
    error: Hl7Error | None = None,
) -> bytes:
    """The ACK message (CR-separated, UTF-8) answering ``msg``.

    ``msg`` is None when the inbound bytes were not even readable; the ACK then uses
    default separators and leaves the sender fields empty.
    """
    seps = msg.seps if msg is not None else Separators()
    if msg is not None:
        header = msg.msh
        sending_app, sending_fac = header.get(3), header.get(4)
        trigger = msg.trigger_event
        version = msg.version or "2.5.1"
        processing = header.get(11) or "P"
        control_id = msg.control_id
    else:
        sending_app = sending_fac = trigger = ""
        version, processing = "2.5.1", "P"
        control_id = error.control_id if error is not None and error.control_id else ""
    segments = [
        msh(
            sending_application=escape(receiver.application, seps),
            sending_facility=escape(receiver.facility, seps),
            receiving_application=sending_app,
            receiving_facility=sending_fac,
            at=now,
            message_type=("ACK", trigger, "ACK") if trigger else ("ACK",),
            control_id=escape(ack_control_id, seps),
            processing_id=processing,
            version=version,
            seps=seps,
        )
    ]
    msa = [code, escape(control_id, seps)]
    if error is not None:
        msa.append(escape(error.reason, seps)[:80])
    segments.append(segment("MSA", msa, seps))
    if error is not None:
        segments.append(_err_segment(error, seps, version))
    return message(segments)


def _err_segment(error: Hl7Error, seps: Separators, version: str) -> str:
    c = seps.component
    code_text = ERROR_TEXT.get(error.code, "Application error")
    location = ""
    if error.segment:
        location = c.join(
            [error.segment, str(error.sequence or 1), str(error.field) if error.field else ""]
        ).rstrip(c)
    condition = f"{error.code}{c}{code_text}{c}HL70357"
    diagnostic = escape(error.reason, seps)
    if _before_25(version):
        # ERR-1 (ELD): segment^sequence^field^code&text&HL70357
        s = seps.subcomponent
        eld = c.join(
            [
                error.segment or "",
                str(error.sequence or ""),
                str(error.field or ""),
                f"{error.code}{s}{code_text}{s}HL70357",
            ]
        )
        return segment("ERR", [eld], seps)
    return segment("ERR", ["", location, condition, "E", "", "", "", diagnostic], seps)


def _before_25(version: str) -> bool:
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return False
    return (major, minor) < (2, 5)


def is_enhanced_mode(msg: Message) -> bool:
    """Enhanced acknowledgment mode: the sender filled MSH-15 or MSH-16."""
    return bool(msg.accept_ack_type or msg.application_ack_type)


def accept_ack_wanted(msg: Message, *, success: bool) -> bool:
    """Whether MSH-15 (accept acknowledgment type, HL7 table 0155) asks for a commit ACK here.

    AL: always; NE: never; ER: only on error; SU: only on success. Empty or unknown: always.
    """
    wanted = msg.accept_ack_type
    if wanted == "NE":
        return False
    if wanted == "ER":
        return not success
    if wanted == "SU":
        return success
    return True


def ack_code_for(msg: Message | None, *, accepted: bool, reject: bool) -> AckCode:
    """AA/AE/AR in original mode, CA/CE/CR (commit acknowledgments) in enhanced mode."""
    enhanced = msg is not None and is_enhanced_mode(msg)
    if accepted:
        return "CA" if enhanced else "AA"
    if reject:
        return "CR" if enhanced else "AR"
    return "CE" if enhanced else "AE"


def build_batch_ack(acks: list[bytes], *, batch_control_id: str, now: datetime, receiver: Receiver) -> bytes:
    """One BHS … BTS batch carrying the ACK of each message of an inbound batch, in order."""
    header = segment(
        "BHS",
        [
            *(DEFAULT.encoding_characters, receiver.application, receiver.facility, "", ""),
            *(timestamp(now), "", "", "", batch_control_id),
        ],
    )
    return (header + "\r").encode() + b"".join(acks) + f"BTS|{len(acks)}\r".encode()
