"""Safety signals in incoming notes: falls, suicidal ideation, allergic reactions, chest pain.

Pure functions. A note (a DocumentReference with a text attachment, as the MDM mapper and
FHIR input give it) is split into sentences. A signal is a phrase from `SIGNALS` found in a
sentence and kept only when the sentence does not take it back, following the ConText
algorithm (Harkema H et al., J Biomed Inform 2009;42(5):839-851): a negation trigger before
it ("denies", "no", "negative for") or after it ("was ruled out"), an experiencer other than
the patient ("mother", "family history"), or a historical trigger ("history of") removes it.
A trigger's scope runs to the end of the sentence, so a whole review-of-systems list is negated
by one "denies", or to a termination term ("but", "however", or an affirming verb: "reports").
An uncertainty trigger ("possible", "concern for", "cannot rule out") keeps the signal at
severity info. So "denies chest pain" raises nothing and "denies fever but reports chest pain"
raises a chest-pain finding.

The notes themselves are not kept in patient state: only the record that brings a note is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from inference.findings import Finding, shorten, time_or
from stream.attachments import attachment_text
from stream.events import AlertInput, Severity

RULE_ID = "note-signal"
RULE_VERSION = "1.0.0"
CITATION = (
    "Signals found with ConText negation, experiencer, history and uncertainty handling: Harkema H, "
    "Dowling JN, Thornblade T, Chapman WW. J Biomed Inform 2009;42(5):839-851."
)
MAX_NOTE_CHARS = 200_000


@dataclass(frozen=True, slots=True)
class Signal:
    """A safety signal: what the card calls it, its severity when asserted, its phrases."""

    name: str
    label: str
    severity: Severity
    phrases: re.Pattern[str]
    not_followed_by: re.Pattern[str] | None = None


def _words(*phrases: str) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(phrases) + r")\b", re.IGNORECASE)


SIGNALS: tuple[Signal, ...] = (
    Signal(
        "suicidal-ideation",
        "suicidal ideation",
        "critical",
        _words(
            r"suicidal(?: ideation| thoughts?)?",
            r"suicide attempt",
            r"(?:kill|hurt|harm)(?:ing)? (?:him|her|my|them)sel(?:f|ves)",
            r"wants? to die",
            r"self[- ]harm",
        ),
    ),
    Signal(
        "fall",
        "a fall",
        "warning",
        _words(r"fell", r"falls?", r"fallen", r"found (?:lying )?on the floor"),
        # "fall risk", "fall precautions": an assessment, not an event
        re.compile(r"^\s*(?:risk|precautions?|prevention|score|assessment)\b", re.IGNORECASE),
    ),
    Signal(
        "allergic-reaction",
        "an allergic reaction",
        "warning",
        _words(r"allergic reaction", r"anaphyla(?:xis|ctic(?: reaction)?)", r"angioedema"),
    ),
    Signal("chest-pain", "chest pain", "warning", _words(r"chest pain", r"chest tightness")),
)

Kind = Literal["negation", "uncertainty", "historical", "experiencer"]
_PRE: Mapping[Kind, re.Pattern[str]] = {
    "negation": _words(
        r"no",
        r"not",
        r"denies",
        r"denied",
        r"denying",
        r"negative for",
        r"without",
        r"never",
        r"free of",
        r"absence of",
        r"no evidence of",
        r"no signs? of",
        r"resolved",
    ),
    "uncertainty": _words(
        r"possible",
        r"possibly",
        r"probable",
        r"suspected",
        r"may have",
        r"might have",
        r"concern for",
        r"question of",
        r"rule out",
        r"r/o",
        r"cannot (?:rule out|exclude)",
        r"to exclude",
    ),
    "historical": _words(r"history of", r"h/o", r"hx of", r"previous", r"prior", r"in the past"),
    "experiencer": _words(
        r"mother",
        r"father",
        r"brother",
        r"sister",
        r"son",
        r"daughter",
        r"wife",
        r"husband",
        r"family history",
        r"family member",
    ),
}
_POST_NEGATION = _words(
    r"(?:was|were|is|been) ruled out",
    r"(?:was|is|were) negative",
    r"(?:is|was) absent",
    r"not (?:seen|present)",
)
# Scope ends here; the affirming verbs also end it ("no fever, reports a fall").
_TERMINATION = _words(
    r"but",
    r"however",
    r"although",
    r"though",
    r"except",
    r"aside from",
    r"apart from",
    r"which",
    r"now",
    r"reports?",
    r"reported",
    r"endorses",
    r"endorsed",
    r"complains? of",
    r"presents? with",
    r"presented with",
    r"admits to",
)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+|\r+")


@dataclass(frozen=True, slots=True)
class Mention:
    """A signal phrase in a sentence and what ConText made of it."""

    signal: Signal
    sentence: str
    modifiers: frozenset[Kind]


def _scoped(sentence: str, start: int) -> frozenset[Kind]:
    """The pre-trigger kinds whose scope reaches the phrase starting at ``start``."""
    before = sentence[:start]
    cut = max((m.end() for m in _TERMINATION.finditer(before)), default=0)
    window = before[cut:]
    return frozenset(kind for kind, pattern in _PRE.items() if pattern.search(window))


def mentions(text: str) -> list[Mention]:
    """Every signal phrase in ``text`` with its ConText modifiers."""
    found: list[Mention] = []
    for sentence in _SENTENCE.split(text[:MAX_NOTE_CHARS]):
        for signal in SIGNALS:
            for match in signal.phrases.finditer(sentence):
                after = sentence[match.end() :]
                if signal.not_followed_by is not None and signal.not_followed_by.match(after):
                    continue
                kinds = set(_scoped(sentence, match.start()))
                tail = after[: (m.start() if (m := _TERMINATION.search(after)) else len(after))]
                if _POST_NEGATION.search(tail):
                    kinds.add("negation")
                found.append(Mention(signal, sentence.strip(), frozenset(kinds)))
    return found


def note_text(resource: Mapping[str, Any]) -> str | None:
    """The text of a DocumentReference's text attachments (None when it has none)."""
    parts = [attachment_text((c or {}).get("attachment") or {}) for c in resource.get("content") or []]
    return "\n".join(p for p in parts if p) or None


def evaluate(resources: Iterable[Mapping[str, Any]], *, default_time: datetime) -> list[Finding]:
    """Findings for the notes among ``resources``: one per signal and note, the strongest kept."""
    findings: dict[str, Finding] = {}
    for resource in resources:
        if (
            resource.get("resourceType") != "DocumentReference"
            or resource.get("status") == "entered-in-error"
        ):
            continue
        text = note_text(resource)
        if not text:
            continue
        ref = f"DocumentReference/{resource.get('id')}"
        at = time_or(resource.get("date"), default_time)
        for mention in mentions(text):
            if mention.modifiers & {"negation", "historical", "experiencer"}:
                continue
            uncertain = "uncertainty" in mention.modifiers
            severity: Severity = "info" if uncertain else mention.signal.severity
            quoted = shorten(mention.sentence, 100)
            finding = Finding(
                rule_id=RULE_ID,
                rule_version=RULE_VERSION,
                key=f"{RULE_ID}/{mention.signal.name}",
                severity=severity,
                level=0 if uncertain else 1,
                summary=shorten(
                    f"Note {'may mention' if uncertain else 'reports'} {mention.signal.label}: “{quoted}”",
                    140,
                ),
                detail=f"A note states: “{shorten(mention.sentence, 400)}”"
                + (" It is worded as uncertain." if uncertain else ""),
                inputs=(AlertInput(label="Note", value=shorten(mention.sentence, 200), at=at, ref=ref),),
                thresholds="asserted in the note (not negated, historical or about someone else)",
                citation=CITATION,
                at=at,
            )
            kept = findings.get(finding.key)
            if kept is None or finding.level > kept.level:
                findings[finding.key] = finding
    return list(findings.values())
