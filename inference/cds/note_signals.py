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

The embedding model adds what the phrase lists miss ("Nurse found her beside the commode",
"He would rather be dead"). With a `NoteMatcher` (the rules get one from the stage), each
sentence without a phrase of a signal is compared with written examples (`EXAMPLES`): of each
signal, and of sentences that sound alike but are not one ("fall risk assessment done",
"depressed after her husband's death"). A sentence is a mention when its closest example is a
signal's and the cosine reaches the threshold; the card names that example and the cosine.
Embeddings do not see negation ("denies wanting to die" sits next to "wants to die"), so
ConText decides again, over the whole sentence: any negation, history or experiencer trigger in
it takes the mention back, which errs towards silence when a sentence also holds a pertinent
negative ("went down in the hallway, no head strike"). A mention found this way is raised one
severity lower than the signal's phrase (critical → warning, warning → info) and says "may
describe".

The notes themselves are not kept in patient state: only the record that brings a note is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from inference.cds.findings import Finding, shorten, time_or
from kernel.attachments import attachment_text
from kernel.errors import ModelRunError
from kernel.events import AlertInput, Severity

RULE_ID = "note-signal"
RULE_VERSION = "1.1.0"
CITATION = (
    "Signals found with ConText negation, experiencer, history and uncertainty handling: Harkema H, "
    "Dowling JN, Thornblade T, Chapman WW. J Biomed Inform 2009;42(5):839-851."
)
MAX_NOTE_CHARS = 200_000
SEMANTIC_MIN_COSINE = 0.5
NOT_A_SIGNAL = "none"


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

# Written by the team for the embedding model's comparison; not taken from the evaluation set
# in bench/note_signals.py. The "none" examples are near misses: alike in words, not an event.
EXAMPLES: Mapping[str, tuple[str, ...]] = {
    "suicidal-ideation": (
        "The patient says she no longer wants to live.",
        "He has been thinking about ending his life.",
        "She took an overdose of her pills on purpose to die.",
        "Patient states that life is not worth living.",
        "He told the nurse he plans to end it all.",
        "She cut her wrists last night.",
        "He keeps a gun at home and has thought about using it on himself.",
    ),
    "fall": (
        "The patient slipped and hit her head on the bathroom floor.",
        "He lost his balance and went down in the hallway.",
        "Found on the ground next to the bed by the night nurse.",
        "Tripped over the walker and landed on his hip.",
        "Her legs gave way and she collapsed to the floor.",
        "Rolled out of bed during the night.",
    ),
    "allergic-reaction": (
        "Developed hives and lip swelling after the first dose of amoxicillin.",
        "Broke out in a rash and started wheezing after the contrast injection.",
        "Her throat felt tight and she could not breathe after the penicillin.",
        "Itchy welts all over his body after starting the new antibiotic.",
        "Face and eyelids swelled up within minutes of the infusion.",
    ),
    "chest-pain": (
        "Pressure in the middle of the chest radiating to the left arm.",
        "Complains of a crushing feeling in his chest.",
        "Sharp substernal discomfort on exertion.",
        "Heaviness behind the breastbone with sweating.",
    ),
    NOT_A_SIGNAL: (
        "Patient feels sad and tearful since the loss of her husband.",
        "Started an antidepressant for low mood.",
        "Patient anxious about the procedure.",
        "Lives alone and uses a cane at home.",
        "Fall risk assessment completed; bed alarm on.",
        "Walks with a walker at baseline.",
        "Physical therapy to work on gait and balance.",
        "Allergies reviewed with the patient and unchanged.",
        "Skin warm and dry.",
        "Chest x-ray ordered to look for pneumonia.",
        "Heart regular rate and rhythm.",
        "Lungs clear to auscultation.",
        "Abdomen soft.",
        "Pain well controlled with acetaminophen.",
        "Slept well overnight.",
        "Follow up in the cardiology clinic in two weeks.",
    ),
}

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


class SentenceEncoder(Protocol):
    """What the matcher needs of an embedding model (`indexer.ort_session.Embedder` has it)."""

    name: str

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """L2-normalised vectors, one row per text."""


@dataclass(frozen=True, slots=True)
class Similar:
    """Why a sentence without a signal phrase was taken for one: its closest example."""

    example: str
    cosine: float
    threshold: float
    model: str


class NoteMatcher:
    """Note sentences against the written examples of each signal (the embedding model's part)."""

    def __init__(
        self,
        encoder: SentenceEncoder,
        *,
        examples: Mapping[str, tuple[str, ...]] = EXAMPLES,
        min_cosine: float = SEMANTIC_MIN_COSINE,
    ) -> None:
        known = {signal.name for signal in SIGNALS} | {NOT_A_SIGNAL}
        if unknown := set(examples) - known:
            raise ValueError(f"examples for unknown signals: {sorted(unknown)}")
        self._encoder, self.min_cosine = encoder, min_cosine
        self._labels = [label for label, texts in examples.items() for _ in texts]
        self._examples = [text for texts in examples.values() for text in texts]
        self._vectors = encoder.embed(self._examples)

    def closest(self, sentences: Sequence[str]) -> list[tuple[str, Similar]]:
        """For each sentence, its closest example's signal (or ``none``) and the evidence."""
        if not sentences:
            return []
        try:
            vectors = self._encoder.embed(sentences)
        except Exception as exc:  # the session, not the note: the stage retries the batch
            raise ModelRunError(f"note embedding failed: {type(exc).__name__}") from exc
        cosines = vectors @ self._vectors.T
        best = cosines.argmax(axis=1)
        return [
            (
                self._labels[int(i)],
                Similar(self._examples[int(i)], float(row[i]), self.min_cosine, self._encoder.name),
            )
            for row, i in zip(cosines, best, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class Mention:
    """A signal in a sentence, what ConText made of it, and, when it was found by the
    embedding model rather than a phrase, the example it resembles."""

    signal: Signal
    sentence: str
    modifiers: frozenset[Kind]
    similar: Similar | None = None


def _scoped(sentence: str, start: int) -> frozenset[Kind]:
    """The pre-trigger kinds whose scope reaches the phrase starting at ``start``."""
    before = sentence[:start]
    cut = max((m.end() for m in _TERMINATION.finditer(before)), default=0)
    window = before[cut:]
    return frozenset(kind for kind, pattern in _PRE.items() if pattern.search(window))


def _whole_sentence(sentence: str) -> frozenset[Kind]:
    """Every ConText kind triggered anywhere in ``sentence`` (for a mention with no position)."""
    kinds: set[Kind] = {kind for kind, pattern in _PRE.items() if pattern.search(sentence)}
    if _POST_NEGATION.search(sentence):
        kinds.add("negation")
    return frozenset(kinds)


def mentions(text: str, matcher: NoteMatcher | None = None) -> list[Mention]:
    """Every signal phrase in ``text`` with its ConText modifiers; with ``matcher``, also the
    sentences the embedding model takes for a signal none of their phrases named."""
    found: list[Mention] = []
    sentences = [s for s in _SENTENCE.split(text[:MAX_NOTE_CHARS]) if s.strip()]
    for sentence in sentences:
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
    if matcher is None:
        return found
    by_name = {signal.name: signal for signal in SIGNALS}
    named = {(m.sentence, m.signal.name) for m in found}
    for sentence, (label, similar) in zip(sentences, matcher.closest(sentences), strict=True):
        text_of = sentence.strip()
        if label == NOT_A_SIGNAL or similar.cosine < similar.threshold or (text_of, label) in named:
            continue
        found.append(Mention(by_name[label], text_of, _whole_sentence(text_of), similar))
    return found


def note_text(resource: Mapping[str, Any]) -> str | None:
    """The text of a DocumentReference's text attachments (None when it has none)."""
    parts = [attachment_text((c or {}).get("attachment") or {}) for c in resource.get("content") or []]
    return "\n".join(p for p in parts if p) or None


_LOWER: Mapping[Severity, Severity] = {"critical": "warning", "warning": "info", "info": "info"}


def evaluate(
    resources: Iterable[Mapping[str, Any]], *, default_time: datetime, matcher: NoteMatcher | None = None
) -> list[Finding]:
    """Findings for the notes among ``resources``: one per signal and note, the strongest kept
    (a phrase over the embedding model, an assertion over an uncertain mention)."""
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
        for mention in mentions(text, matcher):
            if mention.modifiers & {"negation", "historical", "experiencer"}:
                continue
            uncertain = "uncertainty" in mention.modifiers
            similar = mention.similar
            severity: Severity = "info" if uncertain else mention.signal.severity
            if similar is not None:
                severity = _LOWER[severity]
            verb = "may describe" if similar else "may mention" if uncertain else "reports"
            quoted = shorten(mention.sentence, 100)
            detail = f"A note states: “{shorten(mention.sentence, 400)}”" + (
                " It is worded as uncertain." if uncertain else ""
            )
            thresholds = "asserted in the note (not negated, historical or about someone else)"
            if similar is not None:
                detail += (
                    f" None of the {mention.signal.label} phrases is in it; the embedding model"
                    f" ({similar.model}) finds it closest to the example “{similar.example}”"
                    f" (cosine {similar.cosine:.2f})."
                )
                thresholds = (
                    f"cosine ≥ {similar.threshold:.2f} to an example of {mention.signal.label}, closer than"
                    " to any example of what is not one; no negation, history or other person anywhere"
                    " in the sentence"
                )
            finding = Finding(
                rule_id=RULE_ID,
                rule_version=RULE_VERSION,
                key=f"{RULE_ID}/{mention.signal.name}",
                severity=severity,
                level=0 if uncertain else (1 if similar else 2),
                summary=shorten(f"Note {verb} {mention.signal.label}: “{quoted}”", 140),
                detail=detail,
                inputs=(AlertInput(label="Note", value=shorten(mention.sentence, 200), at=at, ref=ref),),
                thresholds=thresholds,
                citation=CITATION,
                at=at,
            )
            kept = findings.get(finding.key)
            if kept is None or finding.level > kept.level:
                findings[finding.key] = finding
    return list(findings.values())
