"""The grounding guard of draft notes: every sentence cites the resources it rests on, and every
number, unit, date, time and drug in it appears in a resource it cites.

Pure functions. A draft is a list of sentences; each is either built from chart data (its
citations are the resources it was built from) or written by the model (its citations are the
evidence items it names with ``[E3]`` markers, plus the items that hold its facts and share its
words: `attribute`). `check` then extracts the sentence's facts and looks for each in the
cited resources' text:

- numbers (``6.2``, ``1,200``, ``two`` … ``twelve``), each with the unit written after it
  (``6.2 mmol/L``: the same number with the same unit must be in a cited resource);
- dates (ISO, ``5 Jan 2025``, ``January 5, 2025``, ``01/05/2025``) and times (``11:00``);
- drugs, by generic name (`kernel.drugs.ingredients`, 20k drugs and their brand names),
  and drug classes (``opioid``, ``antibiotic``).

A number must also come from a cited resource that shares a word with the sentence: ``potassium
6.2`` is not supported by ``sodium 6.2``. Model prose must also be written mostly in its sources'
words (more than a third of its content words found in none of them fails it): invented claims
without numbers ("a rare disease") are caught that way, wrong claims in the sources' own words
("admitted 2015-11-18" for a discharge date) are not, which is why a clinician reviews every
draft. A sentence with no citation, or with a fact no cited resource holds, fails. What happens
to it is the caller's choice (`GuardMode`): removed (the default) or kept with a visible mark;
never shipped silently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Literal

from kernel.drugs import CLASSES, ingredients, names_of

GuardMode = Literal["remove", "mark"]
# Model prose fails when more than 1/NOVEL_SHARE of its content words are in none of its sources
# ("a patient with a rare disease"): the facts check alone cannot see invented claims in words.
NOVEL_SHARE = 3
FactKind = Literal["number", "date", "time", "drug", "drug class"]

_MONTHS = {
    m: n
    for n, names in enumerate(
        (
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ),
        1,
    )
    for m in names
}
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_ISO = re.compile(
    r"\b(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?"
)
_DMY = re.compile(rf"\b(\d{{1,2}})\s+({_MONTH})\.?,?\s+(\d{{4}})\b", re.IGNORECASE)
_MDY = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}}),?\s+(\d{{4}})\b", re.IGNORECASE)
_SLASH = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w.]*\d)")
_UNIT = re.compile(r"\s*([a-zA-Zµ%°][\w/%°^*.\[\]µ]*|%)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_CITE = re.compile(r"\s*\[(?:E\s?\d+(?:\s*,\s*E?\s?\d+)*)\]")
_CITE_NUMBERS = re.compile(r"\d+")
_NUMBER_WORDS = {
    w: n
    for n, w in enumerate(
        ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"), 2
    )
}
# Words after a number that are units; anything else after a number is checked as a number only.
UNITS = frozenset(
    """mg mcg µg ug g kg lb lbs ml l dl mmol/l mg/dl g/dl g/l meq/l iu units unit % mmhg mm[hg] bpm /min
    cm mm m kg/m2 kg/m^2 °c c °f f mg/kg ng/ml pg/ml u/l iu/l 10*3/ul 10*9/l x10^9/l ml/min ml/min/1.73m2
    umol/l µmol/l µmol/l mol/l mmol/mol breaths/min beats/min /min mg/day mg/d mcg/h ml/h tablets tablet
    puffs drops""".split()
)
_CLASS_WORDS = {
    **{c: c for c in CLASSES},
    **{c + "s": c for c in CLASSES},
    "antibiotic": "antibiotic",
    "antibiotics": "antibiotic",
    "anticoagulant": "anticoagulant",
    "anticoagulants": "anticoagulant",
    "opioids": "opioid",
    "nsaids": "nsaid",
    "steroid": "steroid",
    "steroids": "steroid",
    "corticosteroid": "steroid",
    "corticosteroids": "steroid",
    "diuretic": "diuretic",
    "diuretics": "diuretic",
    "antihypertensive": "antihypertensive",
    "antihypertensives": "antihypertensive",
}
# Words too common in clinical prose to tie a sentence to a resource.
_STOP = frozenset(
    """the and with was were has had have for from this that then than into onto over under after before
    during while his her their its patient patients who which will would should could been being also
    not no nor are is of on in at to by as an a or per day days daily week weeks month months year years
    time times noted note notes remained remains stable given started continued stopped recorded result
    results value values level levels test tests normal abnormal high low very range reference date
    admitted discharged discharge admission hospital stay course during overall status active current
    history following follow plan treatment treated well good some more most other none main problem
    problems patient's chart entry entries sentence evidence rising falling unchanged elevated raised
    increased decreased""".split()
)


@dataclass(frozen=True, slots=True)
class Evidence:
    """A resource a draft may rest on: its reference and its text as the index renders it."""

    ref: str
    text: str


@dataclass(frozen=True, slots=True)
class Fact:
    """A checkable claim in a sentence: a number (with its unit), a date, a time or a drug."""

    kind: FactKind
    value: str
    unit: str = ""
    shown: str = ""


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence of a draft and the resources it cites."""

    text: str
    citations: tuple[str, ...]
    section: str = ""
    generated: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """A sentence after the guard: what in it no cited resource holds."""

    sentence: Sentence
    unsupported: tuple[Fact, ...] = ()
    uncited: bool = False
    novel: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Cited, every fact found in what it cites, and (model prose) mostly its sources' words."""
        return not self.uncited and not self.unsupported and not self.novel

    def reason(self) -> str:
        """Why the sentence failed, naming the facts (they are the draft's words, not logged)."""
        if self.uncited:
            return "cites no resource"
        parts = [f"{f.kind} {f.shown or f.value}" for f in self.unsupported]
        if self.novel:
            parts.append("words " + ", ".join(self.novel))
        return "not in the cited resources: " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class GuardResult:
    """A draft's sentences after the guard."""

    kept: tuple[Sentence, ...]
    failed: tuple[Verdict, ...] = field(default=())
    checked: int = 0


def normal_number(text: str) -> str:
    """A written number in one canonical form (``6.20`` → ``6.2``, ``1,200`` → ``1200``)."""
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return text
    normal = value.normalize()
    return format(normal, "f") if normal == normal.to_integral() else str(normal)


def _dates(text: str) -> tuple[list[tuple[str, str]], list[str], str]:
    """(dates as (ISO, shown), times, text with dates and times blanked)."""
    found: list[tuple[str, str]] = []
    times: list[str] = []

    def keep(y: int, m: int, d: int, shown: str) -> None:
        try:
            found.append((date(y, m, d).isoformat(), shown))
        except ValueError:
            found.append((f"{y:04d}-{m:02d}-{d:02d}", shown))  # an impossible date is still a claim

    def iso(m: re.Match[str]) -> str:
        keep(int(m[1]), int(m[2]), int(m[3]), m[0])
        if m[4]:
            times.append(f"{int(m[4]):02d}:{m[5]}")
        return " " * len(m[0])

    def dmy(m: re.Match[str]) -> str:
        keep(int(m[3]), _MONTHS[m[2].lower()], int(m[1]), m[0])
        return " " * len(m[0])

    def mdy(m: re.Match[str]) -> str:
        keep(int(m[3]), _MONTHS[m[1].lower()], int(m[2]), m[0])
        return " " * len(m[0])

    def slash(m: re.Match[str]) -> str:
        keep(int(m[3]), int(m[1]), int(m[2]), m[0])  # US order, as US EHR prose writes it
        return " " * len(m[0])

    def clock(m: re.Match[str]) -> str:
        times.append(f"{int(m[1]):02d}:{m[2]}")
        return " " * len(m[0])

    for pattern, fn in ((_ISO, iso), (_DMY, dmy), (_MDY, mdy), (_SLASH, slash), (_TIME, clock)):
        text = pattern.sub(fn, text)
    return found, times, text


def strip_markers(text: str) -> str:
    """``text`` without ``[E2]``-style evidence markers."""
    return _CITE.sub("", text)


def facts(text: str) -> list[Fact]:
    """The checkable facts of ``text``: dates, times, numbers with units, drugs, drug classes."""
    text = strip_markers(text)
    dates, times, rest = _dates(text)
    out = [Fact("date", iso, shown=shown) for iso, shown in dates]
    out += [Fact("time", t, shown=t) for t in times]
    for m in _NUMBER.finditer(rest):
        unit_match = _UNIT.match(rest, m.end())
        unit = unit_match[1].lower().rstrip(".") if unit_match else ""
        unit = unit if unit in UNITS else ""
        out.append(
            Fact("number", normal_number(m[0].lstrip("+")), unit, (m[0] + (" " + unit if unit else "")))
        )
    words = [w.lower() for w in _WORD.findall(rest)]
    out += [Fact("number", str(_NUMBER_WORDS[w]), shown=w) for w in words if w in _NUMBER_WORDS]
    out += [Fact("drug", name, shown=name) for name in sorted(ingredients(text))]
    out += [Fact("drug class", _CLASS_WORDS[w], shown=w) for w in dict.fromkeys(words) if w in _CLASS_WORDS]
    return out


@dataclass(frozen=True, slots=True)
class _Holdings:
    """What one resource's text can support."""

    dates: frozenset[str]
    times: frozenset[str]
    numbers: frozenset[str]
    pairs: frozenset[tuple[str, str]]
    drugs: frozenset[str]
    words: frozenset[str]
    text: str


def _holdings(text: str) -> _Holdings:
    found = facts(text)
    return _Holdings(
        dates=frozenset(f.value for f in found if f.kind == "date"),
        times=frozenset(f.value for f in found if f.kind == "time"),
        numbers=frozenset(f.value for f in found if f.kind == "number"),
        pairs=frozenset((f.value, f.unit) for f in found if f.kind == "number" and f.unit),
        drugs=frozenset(names_of(text)),
        words=key_terms(text),
        text=text.lower(),
    )


_UNIT_WORDS = frozenset(part for unit in UNITS for part in re.split(r"[/^*.\[\]\d]+", unit) if part)


def key_terms(text: str) -> frozenset[str]:
    """Content words of ``text`` (lower case, 4+ letters, not units, not common clinical prose)."""
    return frozenset(
        w
        for w in (w.lower() for w in _WORD.findall(text))
        if len(w) >= 4 and w not in _STOP and w not in _UNIT_WORDS
    )


def _supports(h: _Holdings, fact: Fact, terms: frozenset[str]) -> bool:
    if fact.kind == "date":
        return fact.value in h.dates
    if fact.kind == "time":
        return fact.value in h.times
    if fact.kind == "number":
        if fact.unit:
            if (fact.value, fact.unit) not in h.pairs:
                return False
        elif fact.value not in h.numbers:
            return False
        return not terms or bool(terms & h.words)  # the number belongs to what the sentence names
    if fact.kind == "drug":
        return fact.value in h.drugs
    return fact.value in h.drugs or fact.shown in h.text  # a drug class: a member, or the class named


def check(sentence: Sentence, evidence: Mapping[str, Evidence]) -> Verdict:
    """``sentence`` against the resources it cites."""
    cited = [evidence[ref] for ref in sentence.citations if ref in evidence]
    if not cited:
        return Verdict(sentence, uncited=True)
    holdings = [_holdings(e.text) for e in cited]
    terms = key_terms(strip_markers(sentence.text))
    unsupported = tuple(f for f in facts(sentence.text) if not any(_supports(h, f, terms) for h in holdings))
    novel: tuple[str, ...] = ()
    if sentence.generated and terms:
        known = frozenset().union(*(h.words for h in holdings))
        missing = sorted(t for t in terms if t not in known and not any(t[:5] == k[:5] for k in known))
        if len(missing) * NOVEL_SHARE > len(terms):
            novel = tuple(missing)
    return Verdict(sentence, unsupported, novel=novel)


def attribute(text: str, pool: Sequence[Evidence], *, most: int = 4) -> tuple[str, ...]:
    """The evidence a generated sentence rests on: items it names (``[E2]``), then items holding one
    of its facts, then items sharing two of its content words (or the one it has), best first."""
    named = [
        pool[n - 1].ref
        for marker in _CITE.findall(text)
        for n in (int(d) for d in _CITE_NUMBERS.findall(marker))
        if 1 <= n <= len(pool)
    ]
    plain = strip_markers(text)
    terms = key_terms(plain)
    sentence_facts = facts(plain)
    scored: list[tuple[int, int, str]] = []
    for order, item in enumerate(pool):
        h = _holdings(item.text)
        shared = len(terms & h.words)
        holds = sum(1 for f in sentence_facts if _supports(h, f, terms))
        specific = any(len(w) >= 5 for w in terms & h.words)
        if holds or shared >= 2 or (shared and specific):
            scored.append((-(holds * 10 + shared), order, item.ref))
    ranked = [ref for _, _, ref in sorted(scored)]
    return tuple(dict.fromkeys([*named, *ranked]))[: max(most, len(named))]


_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\[(\"'])|\n+")
_ABBREVIATIONS = frozenset(
    {"dr.", "mr.", "mrs.", "ms.", "vs.", "e.g.", "i.e.", "approx.", "st.", "no.", "pt."}
)


def split_sentences(text: str) -> list[str]:
    """Sentences of model prose (line breaks and sentence ends; ``6.2`` and ``Dr. A`` kept whole)."""
    parts: list[str] = []
    for piece in _SPLIT.split(text):
        piece = piece.strip(" -*•\t")
        if parts and parts[-1].split()[-1].lower() in _ABBREVIATIONS and piece:
            parts[-1] = f"{parts[-1]} {piece}"
        elif piece:
            parts.append(piece)
    return [p for p in parts if any(c.isalpha() for c in p)]


def guard(sentences: Iterable[Sentence], evidence: Mapping[str, Evidence], mode: GuardMode) -> GuardResult:
    """Check every sentence; failed ones are removed, or kept marked with what was not found."""
    kept: list[Sentence] = []
    failed: list[Verdict] = []
    checked = 0
    for sentence in sentences:
        checked += 1
        verdict = check(sentence, evidence)
        if verdict.ok:
            kept.append(sentence)
            continue
        failed.append(verdict)
        if mode == "mark":
            kept.append(
                Sentence(
                    f"{sentence.text} [UNVERIFIED: {verdict.reason()}]",
                    sentence.citations,
                    sentence.section,
                    sentence.generated,
                )
            )
    return GuardResult(tuple(kept), tuple(failed), checked)
