"""Cited answers to a clinician's question about one patient. Pure, except `answer`, which calls
the generator it is given.

1. `summary`: a problem-oriented evidence summary built from the chart, for the analytes and
   problems the question names ("why is her creatinine rising?" → the creatinine series with its
   trend, the kidney problems, the active drugs that act on the kidney). Each sentence cites the
   resources it was built from; numbers are copied, never computed.
2. The generator answers from numbered entries: those summary lines, the record passages the
   contextual query found and the knowledge-base passages (``kb:<document>#<section>``).
3. Each generated sentence is cited (`kernel.grounding.attribute`) and goes through the grounding
   guard; a sentence the guard refuses is dropped. What ships is the guarded prose, then the
   summary: every sentence cites a record resource or a knowledge passage, and every number in it
   is in what it cites. When nothing in the record answers, the answer is empty, not invented.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inference.assist.facts import Facts, shown
from kernel.chart import Chart
from kernel.drugs import names_of
from kernel.generation import Generation, GenerationConfig
from kernel.grounding import Evidence, Sentence, attribute, guard, split_sentences, strip_markers
from kernel.rendering import render

MAX_SERIES = 6
SYSTEM = (
    "You answer a clinician's question about one patient in at most three sentences, using only the "
    "numbered entries. Put the entry numbers you used in brackets after each sentence, like [E2]. "
    "Keep every number, unit, date and drug name exactly as written. If the entries do not answer "
    "the question, say so."
)


class ChatModel(Protocol):
    """What answering needs of a generator (the ONNX generator and the OpenAI-compatible client)."""

    name: str

    def chat(self, messages: Sequence[dict[str, str]], config: GenerationConfig) -> Generation:
        """The assistant's answer to ``messages``."""


@dataclass(frozen=True, slots=True)
class Topic:
    """What a question can be about: its words, the analytes, problem words and drug classes."""

    name: str
    words: re.Pattern[str]
    analytes: tuple[str, ...]
    problems: re.Pattern[str]
    drugs: frozenset[str]


TOPICS: tuple[Topic, ...] = (
    Topic(
        "kidney",
        re.compile(r"creatinine|kidney|renal|egfr|gfr|aki|nephro|albumin", re.I),
        ("creatinine", "egfr", "uacr", "potassium"),
        re.compile(r"kidney|renal|nephro", re.I),
        frozenset(
            {
                "ace inhibitor",
                "angiotensin receptor blocker",
                "nsaid",
                "loop diuretic",
                "thiazide",
                "metformin",
            }
        ),
    ),
    Topic(
        "glucose",
        re.compile(r"glucose|sugar|a1c|hba1c|diabet|glyc", re.I),
        ("hba1c", "fasting_glucose", "glucose"),
        re.compile(r"diabet|glucose|glyc", re.I),
        frozenset({"metformin", "insulin", "sulfonylurea", "sglt2 inhibitor", "corticosteroid"}),
    ),
    Topic(
        "blood pressure",
        re.compile(r"blood pressure|\bbp\b|hypertens|systolic|diastolic", re.I),
        ("systolic_bp", "diastolic_bp"),
        re.compile(r"hypertens", re.I),
        frozenset(
            {
                "thiazide",
                "ace inhibitor",
                "angiotensin receptor blocker",
                "calcium channel blocker",
                "beta blocker",
            }
        ),
    ),
    Topic(
        "lipids",
        re.compile(r"cholesterol|lipid|ldl|hdl|triglycerid|statin", re.I),
        ("ldl", "total_cholesterol", "hdl", "triglycerides"),
        re.compile(r"lipid|cholesterol|triglycerid", re.I),
        frozenset({"statin"}),
    ),
    Topic(
        "anaemia",
        re.compile(r"an(a)?emi|h(a)?emoglobin|\bhb\b|\bhgb\b", re.I),
        ("hemoglobin",),
        re.compile(r"an(a)?emi", re.I),
        frozenset({"iron", "ferrous sulfate"}),
    ),
    Topic(
        "potassium",
        re.compile(r"potassium|\bk\+?\b|hyperkal", re.I),
        ("potassium", "creatinine"),
        re.compile(r"kidney|renal|hyperkal", re.I),
        frozenset({"ace inhibitor", "angiotensin receptor blocker", "potassium-sparing diuretic"}),
    ),
    Topic(
        "thyroid",
        re.compile(r"thyro|tsh|\bt4\b", re.I),
        ("tsh", "free_t4"),
        re.compile(r"thyro", re.I),
        frozenset({"levothyroxine"}),
    ),
    Topic(
        "weight",
        re.compile(r"weight|bmi|obes", re.I),
        ("bmi",),
        re.compile(r"obes|weight", re.I),
        frozenset(),
    ),
)
LABELS = {
    "creatinine": "Creatinine",
    "egfr": "eGFR",
    "uacr": "Albumin/creatinine",
    "potassium": "Potassium",
    "hba1c": "HbA1c",
    "fasting_glucose": "Fasting glucose",
    "glucose": "Glucose",
    "systolic_bp": "Systolic BP",
    "diastolic_bp": "Diastolic BP",
    "ldl": "LDL cholesterol",
    "total_cholesterol": "Total cholesterol",
    "hdl": "HDL cholesterol",
    "triglycerides": "Triglycerides",
    "hemoglobin": "Haemoglobin",
    "tsh": "TSH",
    "free_t4": "Free T4",
    "bmi": "BMI",
}


def topics_of(question: str) -> list[Topic]:
    """The topics a question names."""
    return [t for t in TOPICS if t.words.search(question)]


def summary(f: Facts, question: str) -> list[Sentence]:
    """The problem-oriented evidence summary for ``question``: series, problems, drugs, cited."""
    lines: list[Sentence] = []
    seen: set[str] = set()
    for topic in topics_of(question):
        for analyte in topic.analytes:
            series = f.series(analyte)[-MAX_SERIES:]
            if not series or analyte in seen:
                continue
            seen.add(analyte)
            values = "; ".join(shown(r) for r in series)
            trend = ""
            if len(series) >= 2 and series[0].value is not None and series[-1].value is not None:
                first, last = series[0].value, series[-1].value
                trend = ", rising" if last > first else ", falling" if last < first else ", unchanged"
            text = f"{LABELS.get(analyte, analyte)}: {values}{trend}."
            lines.append(Sentence(text, tuple(dict.fromkeys(r.ref for r in series)), "Evidence"))
        for p in f.problems:
            if topic.problems.search(p.text) and p.ref not in seen:
                seen.add(p.ref)
                since = f" since {p.onset.date().isoformat()}" if p.onset else ""
                lines.append(Sentence(f"Problem: {p.text}{since}.", (p.ref,), "Evidence"))
        for course in f.active_courses():
            if names_of(course.name) & topic.drugs and course.latest_ref not in seen:
                seen.add(course.latest_ref)
                started = f", first ordered {course.start.date().isoformat()}" if course.start else ""
                lines.append(
                    Sentence(f"Active medication: {course.name}{started}.", (course.latest_ref,), "Evidence")
                )
    return lines


def resource_evidence(chart: Chart, refs: Sequence[str]) -> dict[str, Evidence]:
    """Each cited resource's text as the index renders it (what the guard checks against)."""
    out = {}
    for ref in refs:
        resource = chart.resources.get(ref)
        if resource is not None:
            out[ref] = Evidence(ref, " ".join(t for _, t in render(dict(resource))))
    return out


def prompt(question: str, entries: Sequence[Evidence]) -> list[dict[str, str]]:
    """The chat messages: the numbered entries, then the question."""
    numbered = "\n".join(f"[E{i}] {e.text}" for i, e in enumerate(entries, 1))
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Entries:\n{numbered}\n\nQuestion: {question}"},
    ]


@dataclass(frozen=True, slots=True)
class Answer:
    """A cited answer: its sentences (each with citations) and what they cite."""

    sentences: tuple[Sentence, ...]
    sources: Mapping[str, Evidence]
    model: str
    removed: int
    generated_tokens: int
    generation_s: float

    @property
    def text(self) -> str:
        """The answer as one paragraph."""
        return " ".join(s.text for s in self.sentences)

    def public(self) -> dict[str, Any]:
        """The `/assist/ask` response body."""
        cited = dict.fromkeys(c for s in self.sentences for c in s.citations)
        return {
            "answer": self.text,
            "sentences": [{"text": s.text, "citations": list(s.citations)} for s in self.sentences],
            "sources": [{"id": ref, "text": self.sources[ref].text} for ref in cited if ref in self.sources],
            "model": self.model,
            "guard": {"removed": self.removed},
            "generated_tokens": self.generated_tokens,
            "generation_s": round(self.generation_s, 3),
        }


def answer(
    question: str,
    chart: Chart,
    f: Facts,
    record: Sequence[Evidence],
    knowledge: Sequence[Evidence],
    model: ChatModel,
    *,
    max_new_tokens: int = 96,
) -> Answer:
    """Answer ``question`` from the summary, the record passages and the knowledge passages.

    Raises whatever the model raises (the caller answers 503): never an uncited answer.
    """
    lines = summary(f, question)
    cited_refs = [c for s in lines for c in s.citations] + [e.ref for e in record]
    sources = resource_evidence(chart, cited_refs)
    for e in record:
        sources.setdefault(e.ref, e)
    for e in knowledge:
        sources[e.ref] = e
    entries = [Evidence(s.citations[0], s.text) for s in lines] + list(record) + list(knowledge)
    if not entries:
        return Answer((), {}, model.name, 0, 0, 0.0)
    generation = model.chat(prompt(question, entries), GenerationConfig(max_new_tokens=max_new_tokens))
    # Entry markers name entries; a summary line stands for all the resources it cites.
    by_entry = [s.citations for s in lines] + [(e.ref,) for e in record] + [(e.ref,) for e in knowledge]
    pool = [
        Evidence(ref, sources[ref].text)
        for ref in dict.fromkeys(r for refs in by_entry for r in refs)
        if ref in sources
    ]
    written = []
    for text in split_sentences(generation.text):
        named = [
            ref
            for n in (int(d) for d in re.findall(r"E\s?(\d+)", " ".join(re.findall(r"\[[^\]]*\]", text))))
            if 1 <= n <= len(by_entry)
            for ref in by_entry[n - 1]
        ]
        plain = strip_markers(text).strip()
        if not plain:
            continue
        citations = tuple(dict.fromkeys([*named, *attribute(plain, pool)]))
        written.append(Sentence(plain, citations, "Answer", generated=True))
    checked = guard(written, sources, "remove")
    kept = tuple(checked.kept) + tuple(guard(lines, sources, "remove").kept)
    return Answer(
        kept,
        sources,
        model.name,
        len(checked.failed),
        generation.generated,
        generation.prefill_s + generation.decode_s,
    )
