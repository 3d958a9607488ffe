"""Draft clinical notes from a patient's chart: structured sections built from FHIR data, narrative
sections written by the generator from numbered evidence, every sentence through the guard.

Pure functions except `write_draft`, which calls the generator it is given. The pieces:

- `Chart`: the patient's current resources by reference (``Type/id``), kept by the notes
  stage from `ehr.fhir.v1` (`apply`: the newest version wins, entered-in-error removes).
- `plan`: what a draft of a kind says, for an anchor (the finished Encounter of a discharge
  summary, the DiagnosticReport of a lab interpretation): structured sentences, each citing
  the resources it was built from, and the evidence list the model may use.
- `write_draft`: the generator writes the narrative sections (hospital course, assessment,
  interpretation) from that evidence; `kernel.grounding.attribute` cites each sentence and
  `kernel.grounding.guard` removes (or marks) any sentence whose numbers, units, dates or
  drugs no cited resource holds. Structured sentences go through the same guard.
- `render_markdown`: the note as the clinician reads it, with numbered source markers and the
  source list.

Numbers in structured sentences are copied from the resources, never computed (no length of
stay, no deltas): the guard would refuse anything else, and a reader can check each one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from kernel.chart import Chart, clinical_status, current_problems, medication_courses, ref_of
from kernel.generation import Generation, GenerationConfig
from kernel.grounding import (
    Evidence,
    GuardMode,
    GuardResult,
    Sentence,
    Verdict,
    attribute,
    guard,
    split_sentences,
    strip_markers,
)
from kernel.rendering import concept_text, quantity, render, when

DraftKind = Literal["discharge-summary", "progress-note", "lab-interpretation"]
TITLES: Mapping[DraftKind, str] = {
    "discharge-summary": "Discharge summary",
    "progress-note": "Progress note",
    "lab-interpretation": "Laboratory interpretation",
}
# LOINC document types (DocumentReference.type, TXA-2).
LOINC: Mapping[DraftKind, tuple[str, str]] = {
    "discharge-summary": ("18842-5", "Discharge summary"),
    "progress-note": ("11506-3", "Progress note"),
    "lab-interpretation": ("11502-2", "Laboratory report"),
}
# Narrative sections. A 135M model cannot follow a long evidence list with citation markers
# (it copies the list or drifts), so the course is written one chart event at a time (each
# sentence rests on the event it rewrites) and the summary section from a short list.
EVENT_SECTIONS: Mapping[DraftKind, tuple[str, ...]] = {
    "discharge-summary": ("Encounter", "Procedures", "Medications", "Key results"),
    "progress-note": ("Medications", "Key results"),
    "lab-interpretation": ("Results",),
}
COURSE_TITLE: Mapping[DraftKind, str] = {
    "discharge-summary": "Hospital course",
    "progress-note": "Interval events",
    "lab-interpretation": "Findings",
}
SUMMARY: Mapping[DraftKind, tuple[str, str]] = {
    "discharge-summary": ("Assessment", "state the patient's main problems at discharge"),
    "progress-note": ("Assessment", "state the patient's current problems and the latest abnormal results"),
    "lab-interpretation": ("Interpretation", "state which results are abnormal and how they changed"),
}
EVENT_PROMPT = (
    "You write one sentence of a {note} from one chart entry. Keep every number, unit, date and "
    "drug name exactly as written. Do not add anything."
)
SUMMARY_PROMPT = "Chart entries:\n{entries}\n\nIn two sentences, {instruction}, using only these entries."
MAX_EVENTS = 8
MAX_RETRIEVED = 2
PASSAGE_WORDS = 60
MAX_LINES = 20
LAB_CATEGORIES = frozenset({"laboratory"})
_ABNORMAL = frozenset({"H", "HH", "HU", "L", "LL", "LU", "A", "AA", ">", "<", "POS", "DET", "R"})


class TextGenerator(Protocol):
    """What drafting needs of a generator (`kernel.generator_session.Generator` satisfies it)."""

    name: str
    version: str

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat template applied to ``messages``."""

    def chat(self, messages: Sequence[dict[str, str]], config: GenerationConfig) -> Generation:
        """The assistant's answer to ``messages``."""


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _obs_time(obs: Mapping[str, Any]) -> datetime | None:
    return _time(
        obs.get("effectiveDateTime") or (obs.get("effectivePeriod") or {}).get("start") or obs.get("issued")
    )


def _day(value: Any) -> str:
    return when(value)[:10]


def _in(at: datetime | None, start: datetime | None, end: datetime | None) -> bool:
    return at is not None and (start is None or at >= start) and (end is None or at <= end)


def _interpretation(obs: Mapping[str, Any]) -> str:
    for concept in obs.get("interpretation", []):
        for coding in concept.get("coding", []):
            if coding.get("code"):
                return str(coding["code"]).upper()
    return ""


def abnormal(obs: Mapping[str, Any]) -> bool:
    """An observation flagged abnormal, or whose value lies outside its reference range."""
    if _interpretation(obs) in _ABNORMAL:
        return True
    value = (obs.get("valueQuantity") or {}).get("value")
    if not isinstance(value, int | float):
        return False
    for rng in obs.get("referenceRange", []):
        low, high = (rng.get("low") or {}).get("value"), (rng.get("high") or {}).get("value")
        if (isinstance(low, int | float) and value < low) or (isinstance(high, int | float) and value > high):
            return True
    return False


def _is_lab(obs: Mapping[str, Any]) -> bool:
    cats = {c.get("code") for concept in obs.get("category", []) for c in concept.get("coding", [])}
    return bool(cats & LAB_CATEGORIES) and "valueQuantity" in obs


def _code_key(resource: Mapping[str, Any]) -> str:
    codings = (resource.get("code") or {}).get("coding", [])
    return next(
        (f"{c.get('system')}|{c['code']}" for c in codings if c.get("code")),
        concept_text(resource.get("code")),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """What a draft says before the model writes: structured sentences and the model's evidence."""

    kind: DraftKind
    patient_id: str
    anchor: str  # the Encounter or DiagnosticReport the draft is about ("" for a progress note)
    start: datetime | None
    end: datetime | None
    sections: tuple[tuple[str, tuple[Sentence, ...], str], ...]  # (title, sentences, text when empty)
    evidence: Mapping[str, Evidence]
    retrieved: tuple[Evidence, ...] = ()  # passages from the contextual query (notes, reports)


def _evidence(resource: Mapping[str, Any]) -> Evidence:
    """The resource's text as the index renders it; for a type the index does not render
    (CarePlan), every label, text, value and date in it."""
    text = " ".join(t for _, t in render(dict(resource))) or " ".join(_strings(resource))
    return Evidence(ref_of(resource), text)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("display", "text", "value", "start", "end", "description") and isinstance(
                item, str | int | float
            ):
                yield when(item) if key in ("start", "end") else str(item)
            elif key not in ("id", "reference", "system", "url", "meta", "subject", "encounter"):
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _line(section: str, text: str, *cited: Mapping[str, Any]) -> Sentence:
    return Sentence(text, tuple(dict.fromkeys(ref_of(r) for r in cited)), section)


def _encounter_lines(enc: Mapping[str, Any]) -> list[Sentence]:
    kind = concept_text((enc.get("type") or [{}])[0]) or (enc.get("class") or {}).get("code", "Encounter")
    period = enc.get("period") or {}
    text = f"{kind}: admitted {_day(period.get('start'))}" if period.get("start") else str(kind)
    if period.get("end"):
        text += f", discharged {_day(period.get('end'))}"
    reasons = [concept_text(c) for c in enc.get("reasonCode", []) if concept_text(c)]
    if reasons:
        text += f"; reason: {', '.join(reasons)}"
    hospitalization = enc.get("hospitalization") or {}
    disposition = concept_text(hospitalization.get("dischargeDisposition"))
    if disposition:
        text += f"; discharged to: {disposition}"
    return [_line("Encounter", text + ".", enc)]


def _problems(chart: Chart, end: datetime | None, stay: str = "") -> list[Sentence]:
    """The active problem list at ``end`` (`kernel.chart.current_problems`): current disorders
    and clinical findings, newest first, the diagnoses of ``stay`` (the Encounter a discharge
    summary is about) among them."""
    lines = []
    for p in current_problems(chart, end or datetime.now(UTC), encounter=stay)[:MAX_LINES]:
        onset = _day(p.onset.isoformat()) if p.onset else ""
        lines.append(
            _line(
                "Active problems", f"{p.text}{f' (since {onset})' if onset else ''}.", chart.resources[p.ref]
            )
        )
    return lines


def _medications(chart: Chart, start: datetime | None, end: datetime | None) -> list[Sentence]:
    """One line per medication course (`kernel.chart.medication_courses`), not per order: new
    during the stay, continued, or ordered during the stay and now stopped."""
    lines = []
    for course in medication_courses(chart, end):
        orders = [chart.resources[ref] for ref in course.refs]
        during = [o for o in orders if _in(_time(o.get("authoredOn")), start, end)]
        latest = orders[-1]
        if course.active:
            if during and not any(o not in during for o in orders):
                change, cited = f"new, ordered {_day(during[0].get('authoredOn'))}", [during[0], latest]
            else:
                change, cited = "continued", [latest]
        elif during:
            status = str(latest.get("status", "stopped"))
            change, cited = f"ordered {_day(during[0].get('authoredOn'))}, now {status}", [during[0], latest]
        else:
            continue
        dose = course.dose
        text = f"{course.name}{f': {dose}' if dose else ''} ({change})."
        lines.append(_line("Medications", text, *cited))
        if len(lines) >= MAX_LINES:
            break
    return lines


def _labs(
    chart: Chart, start: datetime | None, end: datetime | None, only: set[str] | None
) -> list[Sentence]:
    """Each analyte's latest result in the window (abnormal first), with the one before it."""
    series: dict[str, list[tuple[datetime, dict[str, Any]]]] = {}
    for obs in chart.of("Observation"):
        at = _obs_time(obs)
        if at is None or not _is_lab(obs) or (end is not None and at > end):
            continue
        series.setdefault(_code_key(obs), []).append((at, obs))
    picked: list[tuple[bool, datetime, Sentence]] = []
    for items in series.values():
        items.sort(key=lambda x: (x[0], ref_of(x[1])))
        at, latest = items[-1]
        if only is not None:
            inside = [(t, o) for t, o in items if ref_of(o) in only]
            if not inside:
                continue
            at, latest = inside[-1]
        elif not _in(at, start, end):
            continue
        before = [(t, o) for t, o in items if t < at]
        name = concept_text(latest.get("code"))
        flag = (
            "abnormal" if abnormal(latest) else "normal" if _interpretation(latest) == "N" else "not flagged"
        )
        text = f"{name} {quantity(latest.get('valueQuantity'))} on {_day(at.isoformat())} ({flag}"
        cited = [latest]
        if before:
            prev_at, prev = before[-1]
            old, new = (
                (prev.get("valueQuantity") or {}).get("value"),
                (latest.get("valueQuantity") or {}).get("value"),
            )
            trend = ""
            if isinstance(old, int | float) and isinstance(new, int | float):
                trend = ", rising" if new > old else ", falling" if new < old else ", unchanged"
            text += f"; previous {quantity(prev.get('valueQuantity'))} on {_day(prev_at.isoformat())}{trend}"
            cited.append(prev)
        picked.append((abnormal(latest), at, _line("Key results", text + ").", *cited)))
    picked.sort(key=lambda x: (not x[0], -x[1].timestamp()))
    return [s for _, _, s in picked[:MAX_LINES]]


def _procedures(chart: Chart, start: datetime | None, end: datetime | None) -> list[Sentence]:
    lines = []
    for proc in chart.of("Procedure"):
        performed = proc.get("performedDateTime") or (proc.get("performedPeriod") or {}).get("start")
        at = _time(performed)
        if _in(at, start, end):
            lines.append(
                (
                    at,
                    _line(
                        "Procedures",
                        f"{concept_text(proc.get('code'))} on {_day(performed)}.",
                        proc,
                    ),
                )
            )
    lines.sort(key=lambda x: x[0] or datetime.min.replace(tzinfo=UTC))
    return [s for _, s in lines[:MAX_LINES]]


def _allergies(chart: Chart) -> list[Sentence]:
    lines = []
    for allergy in chart.of("AllergyIntolerance"):
        if clinical_status(allergy) not in ("", "active"):
            continue
        details = [str(allergy.get("criticality", ""))]
        details += [concept_text(m) for r in allergy.get("reaction", []) for m in r.get("manifestation", [])]
        details = [d for d in details if d]
        name = concept_text(allergy.get("code")) or "Unnamed allergen"
        shown = f" ({'; '.join(details)})" if details else ""
        lines.append(_line("Allergies", f"{name}{shown}.", allergy))
    return lines[:MAX_LINES]


def _follow_up(chart: Chart, end: datetime | None) -> list[Sentence]:
    lines = []
    for plan in chart.of("CarePlan"):
        if plan.get("status") != "active":
            continue
        activities = [
            concept_text((a.get("detail") or {}).get("code"))
            for a in plan.get("activity", [])
            if (a.get("detail") or {}).get("status") not in ("completed", "cancelled")
        ]
        activities = [a for a in activities if a]
        title = concept_text((plan.get("category") or [{}])[-1]) or "Care plan"
        listed = f": {'; '.join(activities)}" if activities else ""
        text = f"{title}{listed}."
        lines.append(_line("Follow-up", text, plan))
    for appt in chart.of("Appointment"):
        start = _time(appt.get("start"))
        if appt.get("status") in ("booked", "pending", "proposed") and (
            end is None or (start and start >= end)
        ):
            what = concept_text((appt.get("serviceType") or [{}])[0]) or str(
                appt.get("description") or "Appointment"
            )
            lines.append(_line("Follow-up", f"{what} on {_day(appt.get('start'))}.", appt))
    for order in chart.of("ServiceRequest"):
        if order.get("status") == "active" and order.get("intent") in ("order", "plan"):
            lines.append(
                _line(
                    "Follow-up",
                    f"{concept_text(order.get('code'))} ordered {_day(order.get('authoredOn'))}.",
                    order,
                )
            )
    return lines[:MAX_LINES]


def _window(
    chart: Chart, kind: DraftKind, anchor: str, now: datetime
) -> tuple[datetime | None, datetime | None, Mapping[str, Any] | None]:
    res = chart.resources.get(anchor) if anchor else None
    if kind == "discharge-summary" and res is not None:
        period = res.get("period") or {}
        return _time(period.get("start")), _time(period.get("end")) or now, res
    if kind == "lab-interpretation" and res is not None:
        at = _time(res.get("effectiveDateTime") or res.get("issued")) or now
        return at - timedelta(days=1), at, res
    return now - timedelta(hours=24), now, res


# Encounter classes (v3 ActCode) whose end calls for a discharge summary: stays, not visits.
DISCHARGE_CLASSES = frozenset({"IMP", "ACUTE", "NONAC", "OBSENC", "EMER", "SS", "PRENC"})


def trigger_refs(resources: Sequence[dict[str, Any]]) -> set[str]:
    """The chart resources `triggers` reads for a record: the record's own (their version
    before it) and the results its DiagnosticReports list."""
    refs = {ref_of(r) for r in resources if r.get("id") and r.get("resourceType")}
    for res in resources:
        if res.get("resourceType") == "DiagnosticReport":
            refs.update(str(r.get("reference", "")) for r in res.get("result", []) if r.get("reference"))
    return refs


def triggers(chart: Chart, resources: Sequence[dict[str, Any]]) -> list[tuple[DraftKind, str]]:
    """The drafts a record calls for, given the chart before it: a discharge summary when a stay's
    Encounter becomes ``finished`` (ADT^A03, or a FHIR update), a lab interpretation for a new
    DiagnosticReport with an abnormal result. A replayed record finds the chart already
    changed and calls for nothing."""
    out: list[tuple[DraftKind, str]] = []
    here = {ref_of(r): r for r in resources if r.get("id") and r.get("resourceType")}
    for ref, res in here.items():
        kind = res["resourceType"]
        before = chart.resources.get(ref)
        if kind == "Encounter" and res.get("status") == "finished":
            if (res.get("class") or {}).get("code") in DISCHARGE_CLASSES and (
                before is None or before.get("status") != "finished"
            ):
                out.append(("discharge-summary", ref))
        elif kind == "DiagnosticReport" and before is None:
            results = [str(r.get("reference", "")) for r in res.get("result", [])]
            found = [here.get(r) or chart.resources.get(r) for r in results]
            if any(o is not None and abnormal(o) for o in found):
                out.append(("lab-interpretation", ref))
    return out


def latest_encounter(chart: Chart) -> str:
    """The most recent encounter's reference ("" when the chart has none)."""
    encounters = sorted(chart.of("Encounter"), key=lambda e: str((e.get("period") or {}).get("start", "")))
    return ref_of(encounters[-1]) if encounters else ""


def latest_report(chart: Chart) -> str:
    """The most recent DiagnosticReport with an abnormal result ("" when none)."""
    reports = [r for r in chart.of("DiagnosticReport") if any(abnormal(o) for o in results_of(chart, r))]
    reports.sort(key=lambda r: str(r.get("effectiveDateTime") or r.get("issued") or ""))
    return ref_of(reports[-1]) if reports else ""


def results_of(chart: Chart, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Observations a DiagnosticReport lists that are in the chart."""
    refs = [str(r.get("reference", "")) for r in report.get("result", [])]
    return [chart.resources[r] for r in refs if r in chart.resources]


def plan(chart: Chart, kind: DraftKind, anchor: str, now: datetime) -> Plan:
    """The structured part of a draft of ``kind`` about ``anchor``, and the model's evidence."""
    start, end, res = _window(chart, kind, anchor, now)
    sections: list[tuple[str, tuple[Sentence, ...], str]] = []

    def add(title: str, lines: list[Sentence], empty: str) -> None:
        sections.append((title, tuple(lines), empty))

    if kind == "discharge-summary":
        if res is not None:
            add("Encounter", _encounter_lines(res), "")
        add("Active problems", _problems(chart, end, anchor), "None recorded in the chart.")
        add("Medications", _medications(chart, start, end), "No medication orders recorded in the chart.")
        add("Key results", _labs(chart, start, end, None), "No laboratory results during this stay.")
        add("Procedures", _procedures(chart, start, end), "No procedures recorded during this stay.")
        add("Allergies", _allergies(chart), "None recorded in the chart.")
        add("Follow-up", _follow_up(chart, end), "No follow-up recorded in the chart.")
    elif kind == "lab-interpretation":
        only = {ref_of(o) for o in results_of(chart, res)} if res is not None else None
        add("Results", _labs(chart, None, end, only), "No results in this report.")
        add("Active problems", _problems(chart, end), "None recorded in the chart.")
        add("Medications", _medications(chart, None, end), "No medication orders recorded in the chart.")
    else:
        add("Active problems", _problems(chart, end), "None recorded in the chart.")
        add("Medications", _medications(chart, start, end), "No medication orders recorded in the chart.")
        add("Key results", _labs(chart, start, end, None), "No laboratory results in the last 24 hours.")
        add("Allergies", _allergies(chart), "None recorded in the chart.")
    cited = dict.fromkeys(ref for _, lines, _ in sections for s in lines for ref in s.citations)
    evidence = {ref: _evidence(chart.resources[ref]) for ref in cited if ref in chart.resources}
    return Plan(kind, chart.patient_id, anchor, start, end, tuple(sections), evidence)


def with_retrieved(p: Plan, hits: Iterable[Evidence], *, most: int = MAX_RETRIEVED) -> Plan:
    """``p`` with passages from the contextual query (notes, reports in the window) that its
    sections do not cite already: the summary section may use them, and the guard checks
    sentences against them like any other source."""
    evidence = dict(p.evidence)
    added: list[Evidence] = []
    for hit in hits:
        if hit.ref not in evidence and len(added) < most:
            evidence[hit.ref] = hit
            added.append(hit)
    return Plan(p.kind, p.patient_id, p.anchor, p.start, p.end, p.sections, evidence, tuple(added))


def events(p: Plan) -> list[Sentence]:
    """The chart events the course section retells, in the plan's order: the encounter, procedures,
    medication changes, abnormal results (continued medications and normal results are not news)."""
    wanted = EVENT_SECTIONS[p.kind]
    picked = [
        s
        for title, lines, _ in p.sections
        if title in wanted
        for s in lines
        if not s.text.endswith("(continued).")
        and (s.section not in ("Key results", "Results") or "(abnormal" in s.text)
    ]
    return picked[:MAX_EVENTS]


def event_prompt(p: Plan, event: Sentence) -> list[dict[str, str]]:
    """The chat messages asking for one sentence retelling ``event``."""
    return [
        {"role": "system", "content": EVENT_PROMPT.format(note=TITLES[p.kind].lower())},
        {"role": "user", "content": f"Chart entry: {event.text}\nSentence:"},
    ]


def summary_prompt(p: Plan, entries: Sequence[Sentence]) -> list[dict[str, str]]:
    """The chat messages asking for the assessment (or interpretation) from ``entries``."""
    _, instruction = SUMMARY[p.kind]
    listed = "\n".join(f"- {s.text}" for s in entries)
    return [{"role": "user", "content": SUMMARY_PROMPT.format(entries=listed, instruction=instruction)}]


def _summary_entries(p: Plan) -> list[Sentence]:
    problems = [s for title, lines, _ in p.sections if title == "Active problems" for s in lines]
    results = [s for s in events(p) if s.section in ("Key results", "Results")]
    passages = [
        Sentence(" ".join(e.text.split()[:PASSAGE_WORDS]), (e.ref,), "Retrieved") for e in p.retrieved
    ]
    return (results + problems)[: MAX_EVENTS - len(passages)] + passages


@dataclass(frozen=True, slots=True)
class Draft:
    """A finished draft: sections of guarded sentences, what the guard removed, and the cost."""

    kind: DraftKind
    patient_id: str
    anchor: str
    sections: tuple[tuple[str, tuple[Sentence, ...], str], ...]
    guard: GuardResult
    model: str
    model_version: str
    prompt_sha256: str
    generated_tokens: int
    generation_s: float
    created: datetime
    mode: GuardMode = "remove"

    def citations(self) -> tuple[str, ...]:
        """Every resource the draft cites, in order of first citation."""
        return tuple(dict.fromkeys(r for _, lines, _ in self.sections for s in lines for r in s.citations))


def write_draft(
    p: Plan,
    generator: TextGenerator | None,
    *,
    now: datetime,
    mode: GuardMode = "remove",
    max_new_tokens: int = 120,
) -> Draft:
    """Generate the narrative sections of ``p`` and guard every sentence of the draft.

    ``generator`` None writes the structured sections only (a deployment without the model)."""
    narrative: list[tuple[str, list[Sentence], str]] = []
    prompts: list[str] = []
    tokens, seconds = 0, 0.0

    def generate(messages: list[dict[str, str]], budget: int) -> str:
        nonlocal tokens, seconds
        if generator is None:
            raise ValueError("no generator")
        prompts.append(generator.render(messages))
        out = generator.chat(messages, GenerationConfig(max_new_tokens=budget, stop=("\n\n",)))
        tokens += len(out.token_ids)
        seconds += out.prefill_s + out.decode_s
        return out.text

    if generator is not None:
        course: list[Sentence] = []
        for event in events(p):
            text = generate(event_prompt(p, event), max_new_tokens // 2)
            for part in split_sentences(text)[:1]:
                # Cited only when it speaks of its event: shares a word or a fact with it.
                rests_on = (
                    ()
                    if _artifact(part)
                    else attribute(part, [Evidence(ref, event.text) for ref in event.citations])
                )
                course.append(Sentence(_clean(part), rests_on, COURSE_TITLE[p.kind], generated=True))
        narrative.append((COURSE_TITLE[p.kind], course, "Nothing the chart supports was written."))
        entries = _summary_entries(p)
        if entries:
            text = generate(summary_prompt(p, entries), max_new_tokens)
            pool = [Evidence(ref, s.text) for s in entries for ref in s.citations]
            title = SUMMARY[p.kind][0]
            lines = [
                Sentence(_clean(t), () if _artifact(t) else attribute(t, pool), title, generated=True)
                for t in split_sentences(text)
            ]
            narrative.append((title, lines, "Nothing the chart supports was written."))
    structured = [(t, list(lines), empty) for t, lines, empty in p.sections]
    sections: list[tuple[str, tuple[Sentence, ...], str]] = []
    kept: list[Sentence] = []
    failed: list[Verdict] = []
    for title, lines, empty in structured + narrative:
        checked = guard(lines, p.evidence, mode)
        sections.append((title, checked.kept, empty))
        kept += checked.kept
        failed += checked.failed
    result = GuardResult(
        tuple(kept), tuple(failed), sum(len(lines) for _, lines, _ in structured + narrative)
    )
    digest = hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()
    return Draft(
        p.kind,
        p.patient_id,
        p.anchor,
        tuple(sections),
        result,
        generator.name if generator else "",
        generator.version if generator else "",
        digest,
        tokens,
        seconds,
        now,
        mode,
    )


_ARTIFACTS = ("chart entr", "evidence", "sentence:", "as an ai", "i cannot", "i'm sorry")


def _artifact(text: str) -> bool:
    """The model talking about its task instead of the patient: never cited, so never shipped."""
    lowered = text.lower()
    return any(a in lowered for a in _ARTIFACTS)


def _clean(text: str) -> str:
    """A generated sentence without its evidence markers (the source list carries them)."""
    return strip_markers(text).strip()


def render_markdown(draft: Draft, evidence: Mapping[str, Evidence]) -> str:
    """The note as the clinician reads it: sections, numbered source markers, the source list."""
    numbers = {ref: n for n, ref in enumerate(draft.citations(), 1)}
    out = [
        f"# {TITLES[draft.kind]} (DRAFT, preliminary: review before signing)",
        "",
        f"Drafted by clinstream on {draft.created.isoformat(timespec='minutes')}"
        + (f" with {draft.model}" if draft.model else " from chart data only")
        + ". Every statement cites its sources; statements the chart does not support were "
        + ("removed" if draft.mode == "remove" else "marked UNVERIFIED")
        + f" ({len(draft.guard.failed)}).",
    ]
    for title, lines, empty in draft.sections:
        out += ["", f"## {title}"]
        if not lines:
            out.append(empty)
        for s in lines:
            marks = "".join(f"[{numbers[r]}]" for r in s.citations if r in numbers)
            out.append(f"- {s.text} {marks}")
    out += ["", "## Sources"]
    for ref, n in numbers.items():
        text = evidence[ref].text if ref in evidence else ""
        out.append(f"[{n}] {ref}: {text}")
    return "\n".join(out) + "\n"
