"""The notes stage: `ehr.fhir.v1` → patient charts → draft notes on `notes.drafts.v1`, write-back,
and the review API (`POST /notes/drafts`, `GET /notes/drafts[/{id}]`, `POST /notes/drafts/{id}/review`).

For each batch of normalized records (consumer group ``notes``): find the drafts each record
calls for (`inference.notes.drafting.triggers`: a stay's Encounter finished, a new report with an
abnormal result), merge the record into the patient's chart, then write each draft and publish
it (the DraftNote on `notes.drafts.v1`; the DocumentReference and Provenance on
`ehr.outbound.fhir.v1` and the MDM^T02 on `ehr.outbound.hl7v2.v1` where write-back is on), and
only then commit. Generation takes seconds and runs in a worker thread at lower CPU priority
(`CLINSTREAM_NOTES__CPU_NICE`), so alerts and ACKs keep the CPU they need. A draft already kept
(same deterministic id) is not written again: a replay changes nothing.

Review: accept (the draft's text becomes final), edit (the clinician's text becomes final) or
reject (entered-in-error). Each decision is published to `clinician.feedback.v1` with the final
text, and the reviewed document goes out on the write-back channels (FHIR PUT, MDM^T08/T11).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiokafka import ConsumerRebalanceListener
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.kafka.subscriber.usecase import BatchSubscriber
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from inference.notes.draft_docs import (
    MdmEvent,
    document_reference,
    draft_event,
    draft_id,
    mdm,
    note_text,
    provenance,
    reviewed_document,
)
from inference.notes.draft_store import NotesStore
from inference.notes.drafting import (
    DraftKind,
    TextGenerator,
    latest_encounter,
    latest_report,
    plan,
    render_markdown,
    trigger_refs,
    triggers,
    with_retrieved,
    write_draft,
)
from kernel.access import read, write
from kernel.changelog_store import Entry
from kernel.chart import Chart, Merges, apply, laid_over, merges
from kernel.events import (
    ClinicianFeedback,
    DeadLetter,
    DraftNote,
    DraftStatus,
    Topics,
    deterministic_id,
)
from kernel.grounding import Evidence, GuardMode
from kernel.http import Guarded, caller, disclose, patient_of, problem, readable
from kernel.kafka import (
    STAGE_CONSUMER,
    BatchCommitter,
    Outgoing,
    Parsed,
    StageConsumer,
    Written,
    changelog_records,
    confirmed,
    counted_dead_letters,
    dead_letter_record,
    fhir_batches,
    retry_later,
)
from kernel.openapi import operation, path_param, query_param
from kernel.writeback import NO_WRITEBACK, ChartIdentifier, WritebackConfig, chart_identifier

log = logging.getLogger(__name__)

DRAFTS = Counter("clinstream_drafts_written", "Draft notes written", ["kind", "trigger"])
REMOVED = Counter("clinstream_draft_sentences_removed", "Sentences the grounding guard removed", ["kind"])
DRAFT_SECONDS = Histogram(
    "clinstream_draft_seconds",
    "Time to write one draft (generation included)",
    ["kind"],
    buckets=(0.5, 1, 2, 5, 10, 20, 40, 80),
)
REVIEWS = Counter("clinstream_draft_reviews", "Clinician decisions on drafts", ["kind", "outcome"])
RETRY_BACKOFF_S = 1.0
RETRIEVAL_QUESTION = {
    "discharge-summary": "reason for admission, hospital course, complications and plan at discharge",
    "progress-note": "current problems, events and plan",
    "lab-interpretation": "clinical context of these laboratory results",
}
# The contextual query: (patient, question, since, until) → passages with the resource they cite.
Search = Callable[[str, str, datetime | None, datetime | None], list[Evidence]]
FhirId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]


@dataclass
class NotesService:
    """Writes drafts from charts; shared by the consumer and the API."""

    store: NotesStore
    generator: TextGenerator | None
    executor: Executor
    mode: GuardMode = "remove"
    max_new_tokens: int = 120
    search: Search | None = None  # the contextual query (patient, question, since, until)
    writeback: WritebackConfig = NO_WRITEBACK
    on_events: frozenset[str] = frozenset({"discharge-summary", "lab-interpretation"})
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def write(self, chart: Chart, kind: DraftKind, anchor: str, trace_id: str = "") -> DraftNote:
        """Plan, generate, guard and package one draft (blocking: call in the executor)."""
        started = self.clock()
        p = plan(chart, kind, anchor, started)
        if self.search is not None:
            try:
                hits = self.search(chart.patient_id, RETRIEVAL_QUESTION[kind], p.start, p.end)
            except Exception:  # the index is an aid here: a draft without passages is still a draft
                log.warning("notes: contextual query failed; drafting from the chart alone", exc_info=True)
                hits = []
            p = with_retrieved(p, hits)
        draft = write_draft(
            p, self.generator, now=started, mode=self.mode, max_new_tokens=self.max_new_tokens
        )
        text = render_markdown(draft, p.evidence)
        doc_id = draft_id(chart.patient_id, kind, anchor)
        patient = _identifier(chart)
        doc = document_reference(doc_id, draft, text, patient)
        note = draft_event(
            doc_id, draft, doc, provenance(doc_id, draft), status="preliminary", trace_id=trace_id
        )
        DRAFT_SECONDS.labels(kind).observe((self.clock() - started).total_seconds())
        REMOVED.labels(kind).inc(len(draft.guard.failed))
        return note

    def outgoing(
        self, topics: Topics, note: DraftNote, event: MdmEvent, chart: Chart | None
    ) -> list[Outgoing]:
        """``note`` on the drafts topic, then its write-back on the channels switched on."""
        key = note.patient_id.encode()
        headers = {"trace_id": note.trace_id, "draft_id": note.id, "kind": note.kind}
        out = [Outgoing(topics.drafts, note.model_dump_json().encode(), key, headers)]
        if self.writeback.fhir:
            for resource in (note.document, note.provenance):
                out.append(
                    Outgoing(
                        topics.outbound_fhir,
                        json.dumps(resource, separators=(",", ":")).encode(),
                        key,
                        headers,
                    )
                )
        if self.writeback.hl7:
            patient = _identifier(chart) if chart is not None else None
            message = mdm(
                note.document,
                note_text(note.document),
                patient,
                note.patient_id,
                event,
                self.clock(),
                receiving_application=self.writeback.receiving_application,
                receiving_facility=self.writeback.receiving_facility,
            )
            out.append(Outgoing(topics.outbound_hl7v2, message, key, headers))
        return out


def _identifier(chart: Chart) -> ChartIdentifier | None:
    patients = chart.of("Patient")
    return chart_identifier(patients[0]) if patients else None


def register_notes(
    broker: KafkaBroker,
    topics: Topics,
    service: NotesService,
    *,
    group_id: str = "notes",
    max_records: int = 64,
    batch_timeout_ms: int = 50,
    consumer: StageConsumer = STAGE_CONSUMER,
    committer: BatchCommitter | None = None,
    listener: ConsumerRebalanceListener | None = None,
) -> BatchSubscriber:
    """Subscribe the notes stage to the normalized FHIR topic. ``committer`` finishes each batch
    (default: outputs confirmed, then offsets); ``listener`` restores assigned partitions' charts
    and drafts before their records are processed."""
    done = committer or BatchCommitter(broker, group_id=group_id)

    @fhir_batches(
        broker,
        topics,
        stage="notes",
        group_id=group_id,
        consumer=consumer,
        max_records=max_records,
        timeout_ms=batch_timeout_ms,
        listener=listener,
    )
    async def draft_notes(msg: KafkaMessage, parsed: Parsed, letters: list[DeadLetter]) -> None:
        loop = asyncio.get_running_loop()
        # What this batch changed in each patient's chart so far (None: taken out). A chart is
        # read whole only when a draft is due: a record's checks need a few of its resources,
        # and a chart may hold thousands.
        batch: dict[str, Merges] = {}
        whole: dict[str, Chart] = {}  # the charts read whole in this batch, kept current
        changes: list[Entry] = []
        outgoing: list[Outgoing] = []
        drafted: dict[str, tuple[DraftNote, int]] = {}  # id → the draft and where its record is
        try:
            for record, one in parsed:  # offset order: a patient's chart changes in turn
                mine = batch.setdefault(one.patient_id, {})
                refs = trigger_refs(one.resources)
                stored = await asyncio.to_thread(
                    service.store.resources, one.patient_id, sorted(refs - mine.keys())
                )
                known = stored | {ref: mine[ref] for ref in refs & mine.keys()}
                before = Chart(one.patient_id, {ref: res for ref, res in known.items() if res is not None})
                wanted = [(k, a) for k, a in triggers(before, one.resources) if k in service.on_events]
                changes += service.store.changes(one.patient_id, one.resources, record.partition)
                chart = whole.get(one.patient_id)
                if chart is None and wanted:
                    stored_chart = await asyncio.to_thread(service.store.chart, one.patient_id)
                    chart = laid_over(stored_chart, mine)
                if chart is not None:  # read once in the batch, then kept up with its records
                    chart = whole[one.patient_id] = apply(chart, one.resources)
                mine.update(merges(one.resources))
                for kind, anchor in wanted:
                    assert chart is not None  # noqa: S101 - read above when a draft is due
                    wanted_id = draft_id(one.patient_id, kind, anchor)
                    if (
                        wanted_id in drafted
                        or await asyncio.to_thread(service.store.draft, wanted_id) is not None
                    ):
                        continue  # written before (a replay): a clinician may be reviewing it
                    note = await loop.run_in_executor(
                        service.executor, service.write, chart, kind, anchor, one.envelope.trace_id
                    )
                    drafted[note.id] = (note, len(outgoing))
                    outgoing += service.outgoing(topics, note, "T02", chart)
        except Exception:  # the chart store or the generator: not the record's fault, retried
            await retry_later(msg, stage="notes", backoff_s=RETRY_BACKOFF_S, what="drafting failed")
            return
        outgoing += [dead_letter_record(topics, letter) for letter in letters]
        outgoing += changelog_records(topics.notes_charts, changes)
        written = await done.commit(msg, outgoing, stage="notes", backoff_s=RETRY_BACKOFF_S)
        if written is None:
            return
        await asyncio.to_thread(service.store.save, confirmed(changes, written))
        for note, at in drafted.values():
            await asyncio.to_thread(service.store.save_draft, note, written[at])
            DRAFTS.labels(note.kind, "event").inc()
            log.info("draft %s kind=%s trace=%s", note.id, note.kind, note.trace_id)
        counted_dead_letters(letters)

    return draft_notes


class DraftRequest(BaseModel):
    """Body of `POST /notes/drafts`."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="FHIR Patient id, or `authority|identifier`."
    )
    type: DraftKind
    anchor: FhirId | None = Field(
        default=None,
        description="Encounter (discharge summary) or DiagnosticReport (lab interpretation) id; "
        "unset: the latest one in the chart.",
    )


class ReviewRequest(BaseModel):
    """Body of `POST /notes/drafts/{id}/review`."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["accept", "edit", "reject"]
    reviewer: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Who decided (display name or practitioner id); kept with the feedback."
    )
    text: Annotated[str, StringConstraints(min_length=1, max_length=200_000)] | None = Field(
        default=None, description="The final note text (required for edit)."
    )
    reason: Annotated[str, StringConstraints(max_length=2000)] | None = None


_OUTCOME: dict[str, Literal["accepted", "edited", "rejected"]] = {
    "accept": "accepted",
    "edit": "edited",
    "reject": "rejected",
}
_STATUS: dict[str, DraftStatus] = {"accept": "final", "edit": "final", "reject": "entered-in-error"}
_EVENT: dict[str, MdmEvent] = {"accept": "T08", "edit": "T08", "reject": "T11"}


def _public(note: DraftNote) -> dict[str, Any]:
    return {
        "id": note.id,
        "patient_id": note.patient_id,
        "type": note.kind,
        "anchor": note.anchor,
        "status": note.status,
        "documentReference": note.document,
        "provenance": note.provenance,
        "citations": list(note.citations),
        "guard": {
            "sentences_checked": note.sentences,
            "removed": len(note.removed),
            "reasons": list(note.removed),
        },
        "model": note.model,
        "generated_tokens": note.generated_tokens,
        "generation_s": note.generation_s,
        "created": note.created.isoformat(),
    }


def _shown(request: Request, note: DraftNote) -> bool:
    """Whether the caller may read this draft: the note and everything it cites; the draft is
    named for the AuditEvent either way (it was looked up)."""
    refs = [f"DocumentReference/{note.id}", *note.citations]
    disclose(request, note.patient_id, [f"DocumentReference/{note.id}"])
    access = caller(request)
    # A facility-limited token cannot be shown a draft found by its id: the key does not say
    # which site registered the patient.
    return readable(request, refs) and access is not None and access.facilities is None


WITHHELD = "the draft cites resources this token's scope does not read"


def notes_routes(
    service: NotesService,
    publish: Callable[[Sequence[Outgoing]], Awaitable[list[Written]]],
    topics: Topics,
) -> list[Guarded]:
    """The draft API. ``publish`` sends records (acks=all) before the API answers. A caller sees
    a draft only when its scope reads the note and every resource the note cites."""

    async def create(request: Request) -> JSONResponse:
        try:
            body = DraftRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return problem(422 if exc.errors()[0]["type"] != "json_invalid" else 400, _first_error(exc))
        patient_id = patient_of(request, body.patient_id)
        chart = await asyncio.to_thread(service.store.chart, patient_id)
        if not chart.resources:
            return problem(404, "no record of this patient in the notes stage")
        kind: DraftKind = body.type
        anchor = ""
        if kind == "discharge-summary":
            anchor = f"Encounter/{body.anchor}" if body.anchor else latest_encounter(chart)
        elif kind == "lab-interpretation":
            anchor = f"DiagnosticReport/{body.anchor}" if body.anchor else latest_report(chart)
            if not anchor:
                return problem(404, "no report with an abnormal result in this patient's chart")
        if anchor and anchor not in chart.resources:
            return problem(404, f"{anchor.split('/')[0]} not in this patient's chart")
        loop = asyncio.get_running_loop()
        note = await loop.run_in_executor(service.executor, service.write, chart, kind, anchor, "")
        written = await publish(service.outgoing(topics, note, "T02", chart))
        await asyncio.to_thread(service.store.save_draft, note, written[0])
        DRAFTS.labels(kind, "request").inc()
        location = {"Location": f"/notes/drafts/{note.id}"}
        if not _shown(request, note):
            return JSONResponse({"id": note.id, "status": note.status, "withheld": WITHHELD}, 201, location)
        return JSONResponse(_public(note), status_code=201, headers=location)

    async def listing(request: Request) -> JSONResponse:
        status = request.query_params.get("status")
        if status not in (None, "preliminary", "final", "entered-in-error"):
            return problem(400, "status must be preliminary, final or entered-in-error")
        notes = await asyncio.to_thread(service.store.drafts, status=status)
        return JSONResponse({"drafts": [_public(n) for n in notes if _shown(request, n)]})

    async def one(request: Request) -> JSONResponse:
        note = await asyncio.to_thread(service.store.draft, str(request.path_params["draft_id"]))
        if note is None:
            return problem(404, "no such draft")
        return JSONResponse(_public(note)) if _shown(request, note) else problem(403, WITHHELD)

    async def review(request: Request) -> JSONResponse:
        note = await asyncio.to_thread(service.store.draft, str(request.path_params["draft_id"]))
        if note is None:
            return problem(404, "no such draft")
        if not _shown(request, note):
            return problem(403, WITHHELD)
        try:
            body = ReviewRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return problem(422 if exc.errors()[0]["type"] != "json_invalid" else 400, _first_error(exc))
        if body.decision == "edit" and body.text is None:
            return problem(422, "an edit needs the final text")
        if note.status != "preliminary":
            return problem(409, f"this draft was already reviewed ({note.status})")
        now = service.clock()
        status = _STATUS[body.decision]
        final_text = body.text if body.decision == "edit" else note_text(note.document)
        doc = reviewed_document(
            note.document, status, body.text if body.decision == "edit" else None, body.reviewer
        )
        reviewed = note.model_copy(update={"status": status, "document": doc})
        outcome = _OUTCOME[body.decision]
        principal = str(getattr(request.state, "principal", "api-token"))
        feedback = ClinicianFeedback(
            id=deterministic_id("Feedback", "draft", note.id, outcome, now.isoformat()),
            patient_id=note.patient_id,
            target="draft",
            target_id=note.id,
            rule_id=note.kind,
            outcome=outcome,
            reason_display=body.reason,
            comment=body.reason,
            final_text=final_text if status == "final" else None,
            draft_text=note_text(note.document),
            reviewer=body.reviewer,
            at=now,
            channel="notes-api",
            principal=principal,
        )
        chart = await asyncio.to_thread(service.store.chart, note.patient_id)
        key = note.patient_id.encode()
        written = await publish(
            [
                Outgoing(topics.feedback, feedback.model_dump_json().encode(), key, {"draft_id": note.id}),
                *service.outgoing(topics, reviewed, _EVENT[body.decision], chart),
            ]
        )
        await asyncio.to_thread(service.store.save_draft, reviewed, written[1])
        REVIEWS.labels(note.kind, outcome).inc()
        return JSONResponse(_public(reviewed))

    return [
        Guarded("/notes/drafts", create, methods=["POST"], need=write("DocumentReference")),
        Guarded("/notes/drafts", listing, methods=["GET"], need=read("DocumentReference")),
        Guarded("/notes/drafts/{draft_id}", one, methods=["GET"], need=read("DocumentReference")),
        Guarded("/notes/drafts/{draft_id}/review", review, methods=["POST"], need=write("DocumentReference")),
    ]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    return f"{where}: {err['msg']}" if where else str(err["msg"])


def openapi_paths() -> dict[str, dict[str, Any]]:
    """The drafts API's operations (OpenAPI)."""
    draft = path_param("draft_id")
    return {
        "/notes/drafts": {
            "post": operation(
                "Draft a note now (never final).", body=DraftRequest, errors=("401", "404", "422", "503")
            ),
            "get": operation(
                "The drafts, newest first.",
                params=[query_param("status", {"type": "string"})],
                errors=("401", "422"),
            ),
        },
        "/notes/drafts/{draft_id}": {
            "get": operation("One draft with its sources.", params=[draft], errors=("401", "404"))
        },
        "/notes/drafts/{draft_id}/review": {
            "post": operation(
                "A clinician accepts, edits or rejects a draft.",
                body=ReviewRequest,
                params=[draft],
                errors=("401", "404", "409", "422", "503"),
            )
        },
    }
