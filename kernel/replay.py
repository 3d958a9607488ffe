"""Replaying dead letters after a fix: which ones, and a hand-corrected one. Pure; `kernel.replay_kafka`
reads and republishes them.

A dead letter that a stage wrote after reading a topic goes back to that topic with its
original key and envelope, so the stage processes it again as if it were new. Input
refused at the edge (MLLP, FHIR ingress) has no source topic: the sender was told and
resends, so it is listed as not replayable as it is. An integration analyst may instead
correct an HL7 v2 message by hand (the ops dashboard): the corrected bytes enter the
inbound topic with a new envelope, keyed by the patient they name, marked as a replay.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from kernel.errors import Hl7Error, ReplayError
from kernel.events import DeadLetter, Topics, content_hash, envelope_headers, patient_key
from kernel.hl7v2.parser import parse_message, patient_identifier


@dataclass(frozen=True, slots=True)
class Replay:
    """A record to write back: a dead letter's bytes (or their correction) and where they go."""

    letter_id: str
    topic: str
    payload: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]
    edited: bool = False


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters to replay. Empty criteria match everything."""

    ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    stage: str | None = None

    def matches(self, letter: DeadLetter) -> bool:
        """Whether this dead letter is selected."""
        if self.ids and letter.id not in self.ids:
            return False
        if self.stage and letter.stage != self.stage:
            return False
        if self.since and letter.failed_at < self.since:
            return False
        return not (self.until and letter.failed_at > self.until)


def plan(letters: Iterable[DeadLetter], selection: Selection) -> tuple[list[DeadLetter], list[DeadLetter]]:
    """(replayable, not replayable) among the selected dead letters, each id once."""
    seen: set[str] = set()
    replay: list[DeadLetter] = []
    refused: list[DeadLetter] = []
    for letter in letters:
        if letter.id in seen or not selection.matches(letter):
            continue
        seen.add(letter.id)
        (replay if letter.source_topic else refused).append(letter)
    return replay, refused


def headers_of(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The original envelope headers, plus a marker that this is a replay."""
    headers = letter.envelope.to_headers() if letter.envelope is not None else []
    return [*headers, ("replay_of", letter.id.encode())]


def as_replay(letter: DeadLetter) -> Replay:
    """The letter's original record, back to the topic it was read from."""
    if letter.source_topic is None:
        raise ReplayError("refused at the edge: the sender was told and resends (or correct it)")
    return Replay(letter.id, letter.source_topic, letter.payload, letter.key, headers_of(letter))


def corrected(letter: DeadLetter, payload: bytes, topics: Topics, *, editor: str, now: datetime) -> Replay:
    """A hand-corrected HL7 v2 message for the inbound topic, with a new envelope.

    The corrected message must parse and name its patient (the record key); the envelope
    gets the correction's hash, a new trace id and who corrected it (no PHI: a login name).
    """
    try:
        message = parse_message(payload.decode("utf-8"))
        key = patient_key(*patient_identifier(message))
    except (UnicodeDecodeError, Hl7Error, ValueError) as exc:
        raise ReplayError(f"the corrected message is not valid HL7 v2: {exc}") from None
    headers = envelope_headers(
        source_system=message.sending_system,
        source_message_id=message.control_id,
        content_hash=content_hash(payload),
        received_at=now,
        trace_id=secrets.token_hex(16),
        message_type=message.message_type,
    )
    extra = [("replay_of", letter.id.encode()), ("corrected_by", editor.encode())]
    return Replay(letter.id, topics.inbound_hl7v2, payload, key.encode(), [*headers, *extra], edited=True)


@dataclass(frozen=True, slots=True)
class Written:
    """Where the broker stored a replay."""

    letter_id: str
    topic: str
    partition: int
    offset: int
