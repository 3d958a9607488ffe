"""The datasets model builders get, built from what the deployment's topics hold (pure).

`Sources` is a snapshot of the topics (normalized records, drafts, clinician feedback,
alerts) in topic order. Each builder de-identifies through `exports.deid` and returns rows
sorted by their id, so the same snapshot and key always give the same rows:

- `pretraining`: one document per patient, its timeline in chart words;
- `instructions`: task pairs drawn from the ecosystem: record context → the note a clinician
  accepted or edited; a lab panel → the laboratory's own interpretation (the report's
  conclusion, or the results it flagged); the state a rule read → the alert's rationale;
- `preferences`: the model's draft (rejected) against the clinician's edit (chosen).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

from exports.deid import Deidentifier, PatientScrubber
from kernel.events import Alert, ClinicianFeedback, DraftNote, FhirRecord
from kernel.rendering import INTERPRETATION, effective_time, render, render_observation

Resource = dict[str, Any]
Row = dict[str, Any]
Kind = Literal["pretraining", "instructions", "preferences"]
KINDS: tuple[Kind, ...] = ("pretraining", "instructions", "preferences")
_FLAGS = frozenset(code for code, label in INTERPRETATION.items() if label != "normal")


@dataclass(frozen=True)
class Sources:
    """What an export reads, each in topic order (later records supersede earlier ones)."""

    records: Sequence[FhirRecord] = ()
    drafts: Sequence[DraftNote] = ()
    feedback: Sequence[ClinicianFeedback] = ()
    alerts: Sequence[Alert] = ()


@dataclass(frozen=True)
class Filters:
    """Which resources a dataset draws on (by their clinical date, before shifting)."""

    since: date | None = None
    until: date | None = None
    types: frozenset[str] = frozenset()
    include_overridden: bool = False

    def keeps(self, resource: Mapping[str, Any]) -> bool:
        """True when ``resource`` is inside the filters."""
        if self.types and resource.get("resourceType") not in self.types:
            return False
        at = effective_time(dict(resource))[:10]
        if self.since and (not at or at < self.since.isoformat()):
            return False
        return not (self.until and (not at or at > self.until.isoformat()))

    def described(self) -> dict[str, Any]:
        """The filters as the dataset card states them."""
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "types": sorted(self.types),
            "include_overridden_alerts": self.include_overridden,
        }


@dataclass
class Chart:
    """One patient's current resources (``Type/id`` → resource)."""

    patient_id: str
    resources: dict[str, Resource] = field(default_factory=dict)


def charts(records: Iterable[FhirRecord]) -> dict[str, Chart]:
    """Each patient's resources, the latest version of each (records in topic order)."""
    out: dict[str, Chart] = {}
    for record in records:
        chart = out.setdefault(record.patient_id, Chart(record.patient_id))
        for resource in record.resources:
            ref = f"{resource.get('resourceType')}/{resource.get('id')}"
            chart.resources[ref] = resource
    return out


def _scrubbers(deid: Deidentifier, found: Mapping[str, Chart]) -> dict[str, PatientScrubber]:
    return {pid: deid.patient(pid, chart.resources.values()) for pid, chart in found.items()}


def _line(resource: Resource) -> str:
    """One resource (already de-identified) as one line of chart text."""
    parts = [f"{heading}: {text}" if heading else text for heading, text in render(resource)]
    return " ".join(" ".join(parts).split())


def _row_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


def pretraining(sources: Sources, deid: Deidentifier, filters: Filters = Filters()) -> list[Row]:
    """One de-identified timeline document per patient, events in date order."""
    found = charts(sources.records)
    scrub = _scrubbers(deid, found)
    rows = []
    for pid, chart in found.items():
        s = scrub[pid]
        events: list[tuple[str, str, str]] = []
        header = ""
        for resource in chart.resources.values():
            is_patient = resource.get("resourceType") == "Patient"
            if not is_patient and not filters.keeps(resource):
                continue
            clean = s.resource(resource)
            if clean is None:
                continue
            if is_patient:
                header = header or _line(clean)
                continue
            line = _line(clean)
            if line:
                events.append((effective_time(clean), str(clean.get("id", "")), line))
        if not events:
            continue
        events.sort()
        dated = [e[0][:10] for e in events if e[0]]
        text = "\n".join([header, *(e[2] for e in events)] if header else [e[2] for e in events])
        rows.append(
            {
                "id": s.pseudonym,
                "text": text,
                "events": len(events),
                "first": min(dated) if dated else None,
                "last": max(dated) if dated else None,
            }
        )
    return sorted(rows, key=lambda r: str(r["id"]))


def _latest_drafts(drafts: Iterable[DraftNote]) -> dict[str, DraftNote]:
    return {d.id: d for d in drafts}


def _draft_context(draft: DraftNote, chart: Chart | None, s: PatientScrubber) -> str:
    """The chart entries a draft cites, de-identified, one per line."""
    if chart is None:
        return ""
    lines = []
    for ref in draft.citations:
        resource = chart.resources.get(ref)
        clean = s.resource(resource) if resource is not None else None
        if clean is not None:
            lines.append(_line(clean))
    return "\n".join(line for line in lines if line)


def _note_instruction(kind: str) -> str:
    return (
        f"Write a {kind.replace('-', ' ')} for this patient from the chart entries below. "
        "State only what they support."
    )


def _reviewed(sources: Sources) -> list[tuple[ClinicianFeedback, DraftNote]]:
    drafts = _latest_drafts(sources.drafts)
    decided: dict[str, ClinicianFeedback] = {}
    for fb in sources.feedback:
        if fb.target == "draft" and fb.target_id in drafts:
            decided[fb.target_id] = fb
    return [(fb, drafts[fb.target_id]) for fb in decided.values()]


def instructions(sources: Sources, deid: Deidentifier, filters: Filters = Filters()) -> list[Row]:
    """Instruction pairs: notes clinicians signed, lab interpretations, alert rationales."""
    found = charts(sources.records)
    scrub = _scrubbers(deid, found)

    def scrubber(pid: str) -> PatientScrubber:
        if pid not in scrub:
            scrub[pid] = deid.patient(pid, ())
        return scrub[pid]

    rows: list[Row] = []
    for fb, draft in _reviewed(sources):
        final = fb.final_text if fb.outcome in ("accepted", "edited") else None
        if not final:
            continue
        s = scrubber(draft.patient_id)
        context = _draft_context(draft, found.get(draft.patient_id), s)
        if not context:
            continue
        rows.append(
            {
                "id": _row_id("note", fb.target_id),
                "task": draft.kind,
                "instruction": _note_instruction(draft.kind),
                "input": context,
                "output": s.text(final),
                "source": f"clinician {fb.outcome} draft",
                "patient": s.pseudonym,
            }
        )
    for pid, chart in found.items():
        rows += _lab_pairs(chart, scrubber(pid), filters)
    overridden = {
        fb.target_id for fb in sources.feedback if fb.target == "alert" and fb.outcome == "overridden"
    }
    latest = {a.id: a for a in sources.alerts}
    for alert in latest.values():
        if alert.id in overridden and not filters.include_overridden:
            continue
        rows.append(_alert_pair(alert, found.get(alert.patient_id), scrubber(alert.patient_id)))
    return sorted(rows, key=lambda r: str(r["id"]))


def _lab_pairs(chart: Chart, s: PatientScrubber, filters: Filters) -> list[Row]:
    """Reports with results: the results → the report's conclusion, or the flags it set."""
    rows = []
    for ref, report in chart.resources.items():
        if report.get("resourceType") != "DiagnosticReport" or not filters.keeps(report):
            continue
        results = [
            chart.resources[r["reference"]]
            for r in report.get("result", [])
            if isinstance(r, dict) and r.get("reference") in chart.resources
        ]
        if not results:
            continue
        clean = [c for c in (s.resource(r) for r in results) if c is not None]
        conclusion = str(report.get("conclusion") or "")
        flagged = [render_observation(c) for c in clean if _flag(c)]
        if conclusion:
            output = s.text(conclusion)
        elif flagged:
            output = "Abnormal: " + "; ".join(flagged)
        else:
            output = "All results within the reference ranges given."
        name = _line(s.resource(report) or {}).split(" Conclusion:")[0]
        rows.append(
            {
                "id": _row_id("lab", ref),
                "task": "lab-interpretation",
                "instruction": "Interpret this laboratory panel: name what is abnormal.",
                "input": "\n".join([name, *(render_observation(c) for c in clean)]),
                "output": output,
                "source": "laboratory conclusion" if conclusion else "laboratory flags",
                "patient": s.pseudonym,
            }
        )
    return rows


def _flag(observation: Mapping[str, Any]) -> bool:
    return any(
        str(c.get("code", "")).upper() in _FLAGS
        for i in observation.get("interpretation", [])
        for c in i.get("coding", [])
    )


def _alert_pair(alert: Alert, chart: Chart | None, s: PatientScrubber) -> Row:
    lines = []
    for item in alert.inputs:
        at = f" at {s.when(item.at)}" if item.at else ""
        lines.append(f"{item.label}: {s.text(item.value)}{at}")
    if chart is not None:
        for ref in alert.evidence:
            resource = chart.resources.get(ref)
            clean = s.resource(resource) if resource is not None else None
            if clean is not None and (line := _line(clean)) and line not in lines:
                lines.append(line)
    return {
        "id": _row_id("alert", alert.id),
        "task": "alert-rationale",
        "instruction": f"Given this patient state, explain whether rule '{alert.rule_id}' applies and why.",
        "input": "\n".join(lines),
        "output": s.text(f"{alert.summary}\n{alert.detail}".strip()),
        "source": f"rule {alert.rule_id} v{alert.rule_version}",
        "patient": s.pseudonym,
    }


def preferences(sources: Sources, deid: Deidentifier, filters: Filters = Filters()) -> list[Row]:
    """(prompt, chosen, rejected): each draft a clinician edited; the edit is preferred."""
    del filters  # drafts are selected by review, not by resource date
    found = charts(sources.records)
    rows = []
    for fb, draft in _reviewed(sources):
        if fb.outcome != "edited" or not fb.final_text or not fb.draft_text:
            continue
        if fb.final_text.strip() == fb.draft_text.strip():
            continue
        s = deid.patient(draft.patient_id, (found.get(draft.patient_id) or Chart("")).resources.values())
        context = _draft_context(draft, found.get(draft.patient_id), s)
        rows.append(
            {
                "id": _row_id("preference", fb.target_id),
                "task": draft.kind,
                "prompt": f"{_note_instruction(draft.kind)}\n\n{context}".strip(),
                "chosen": s.text(fb.final_text),
                "rejected": s.text(fb.draft_text),
                "model": draft.model or "chart-only",
                "patient": s.pseudonym,
            }
        )
    return sorted(rows, key=lambda r: str(r["id"]))


BUILDERS = {"pretraining": pretraining, "instructions": instructions, "preferences": preferences}


def build(kind: Kind, sources: Sources, deid: Deidentifier, filters: Filters = Filters()) -> list[Row]:
    """The rows of dataset ``kind``."""
    return BUILDERS[kind](sources, deid, filters)


def date_range(rows: Sequence[Row]) -> tuple[str | None, str | None]:
    """First and last (shifted) dates the rows span, where they carry dates."""
    firsts = [str(r["first"]) for r in rows if r.get("first")]
    lasts = [str(r["last"]) for r in rows if r.get("last")]
    return (min(firsts) if firsts else None, max(lasts) if lasts else None)
