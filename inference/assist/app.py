"""The assistance stage: `ehr.fhir.v1` → patient charts; `POST /assist/diagnoses`,
`POST /assist/treatments`, `POST /assist/ask`; CDS Hooks services for the suggestions; accepted
diagnosis suggestions written back as provisional Conditions.

Charts: consumer group ``assist`` merges each normalized record into the patient's chart
(`kernel.chart_store.ChartStore`): the changes go to the changelog `assist.charts.v1` with the
input offsets (one transaction on Apache Kafka), every instance's replica follows it, so a
request is answered by any instance; a replay changes nothing.

Requests: the patient is a FHIR id or ``authority|identifier`` (`kernel.identity.resolve_patient`).
A patient the stage has never seen is 404; a patient with nothing to suggest gets empty lists.
Suggestions are computed on the request from the chart (pure rules, milliseconds); the chart is
read in a worker thread. `ask` retrieves from the record and the knowledge base, then the
generator (the built-in ONNX model or an OpenAI-compatible server) answers in a worker thread with
a time limit; a failed or late model is 503 with Retry-After, never an uncited answer.

Feedback: decision support keeps CDS Hooks feedback (`clinician.feedback.v1`); this stage reads
it (group ``assist-feedback``) and, for an accepted "add to the problem list" suggestion, puts the
provisional Condition on the FHIR write-back topic (its id is deterministic: a second acceptance
writes the same Condition).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

from aiokafka import ConsumerRebalanceListener
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from inference.assist import cards
from inference.assist.answers import ChatModel, answer
from inference.assist.diagnoses import suggest_diagnoses
from inference.assist.facts import Facts, facts
from inference.assist.suggestions import DiagnosisSuggestion, TreatmentSuggestion
from inference.assist.treatments import review_order, suggest_treatments
from kernel.access import read, refs_in
from kernel.cds_hooks import draft_orders
from kernel.chart import Chart
from kernel.chart_store import ChartStore
from kernel.events import ClinicianFeedback, DeadLetter, Topics
from kernel.grounding import Evidence
from kernel.http import Guarded, caller, disclose, patient_of, problem, readable
from kernel.kafka import (
    STAGE_CONSUMER,
    BatchCommitter,
    Outgoing,
    Parsed,
    StageConsumer,
    changelog_records,
    commit_after,
    confirmed,
    counted_dead_letters,
    dead_letter_and_commit,
    dead_letter_for,
    dead_letter_record,
    fhir_batches,
    publish_in_order,
    single_record,
)
from kernel.openapi import operation
from kernel.writeback import chart_identifier, patient_reference

log = logging.getLogger(__name__)

SUGGESTIONS = Counter("clinstream_assist_suggestions", "Suggestions served", ["kind", "rule_id"])
ASSIST_SECONDS = Histogram(
    "clinstream_assist_seconds",
    "Time to answer an assistance request",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 15, 30),
)
WRITTEN_BACK = Counter("clinstream_assist_conditions_written", "Accepted diagnoses written back")
RETRY_BACKOFF_S = 1.0
RETRY_AFTER_S = "10"

# Retrieval for `ask`: (patient, question) → (record passages, knowledge passages).
Retrieve = Callable[[str, str], tuple[list[Evidence], list[Evidence]]]


class PatientRequest(BaseModel):
    """Body of `POST /assist/diagnoses` and `POST /assist/treatments`."""

    model_config = ConfigDict(extra="forbid")

    patient_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] = Field(
        description="FHIR Patient id, or `authority|identifier`."
    )


class AskRequest(PatientRequest):
    """Body of `POST /assist/ask`."""

    question: Annotated[str, StringConstraints(min_length=3, max_length=1000)]


@dataclass
class AssistService:
    """Suggestions and answers from the stage's charts; shared by the consumer, the API and the
    CDS Hooks services."""

    store: ChartStore
    executor: Executor
    model: ChatModel | None = None
    retrieve: Retrieve | None = None
    disabled: frozenset[str] = frozenset()
    ask_timeout_s: float = 30.0
    max_new_tokens: int = 96
    writeback: bool = True
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    async def chart(self, patient_id: str) -> Chart:
        """The patient's chart (read in a worker thread)."""
        return await asyncio.to_thread(self.store.chart, patient_id)

    def facts(self, chart: Chart) -> Facts:
        """What the rules see of ``chart`` now."""
        return facts(chart, self.clock())

    def diagnoses(self, f: Facts) -> list[DiagnosisSuggestion]:
        """Diagnosis suggestions for ``f``."""
        return suggest_diagnoses(f, disabled=self.disabled)

    def treatments(self, f: Facts, suggested: Sequence[DiagnosisSuggestion]) -> list[TreatmentSuggestion]:
        """Treatment suggestions for ``f`` (its documented and suggested problems)."""
        return suggest_treatments(f, suggested, disabled=self.disabled)

    def ask(self, chart: Chart, question: str) -> dict[str, Any]:
        """A cited answer (blocking: retrieval and generation; call it in the executor).

        Raises:
            Exception: whatever retrieval or the model raises; the route answers 503.
        """
        if self.model is None:
            raise RuntimeError("no generator configured")
        record, knowledge = self.retrieve(chart.patient_id, question) if self.retrieve else ([], [])
        found = answer(
            question,
            chart,
            self.facts(chart),
            record,
            knowledge,
            self.model,
            max_new_tokens=self.max_new_tokens,
        )
        return found.public()


def _public_treatment(s: TreatmentSuggestion) -> dict[str, Any]:
    return s.model_dump(mode="json", by_alias=True)


ASSIST_READ = read("Condition", "Observation", "MedicationRequest", "AllergyIntolerance", "DiagnosticReport")
"""Assistance reasons over problems, results, medications and allergies: a caller needs read of
one of them, and sees only the suggestions and sentences whose every resource it may read."""


def _visible(request: Request, items: Sequence[Any], chart: Chart) -> list[Any]:
    """The items (JSON) of an answer whose cited record resources the caller may all read; what
    they cite is named for the AuditEvent."""
    kept = [item for item in items if readable(request, refs_in(item, chart.resources))]
    disclose(request, chart.patient_id, {ref for item in kept for ref in refs_in(item, chart.resources)})
    return kept


def _visible_answer(request: Request, result: dict[str, Any], chart: Chart) -> dict[str, Any]:
    """An `/assist/ask` answer less the sentences that cite what the caller may not read."""
    sentences = _visible(request, result["sentences"], chart)
    if len(sentences) == len(result["sentences"]):
        return result
    cited = {c for s in sentences for c in s["citations"]}
    return {
        **result,
        "answer": " ".join(s["text"] for s in sentences),
        "sentences": sentences,
        "sources": [src for src in result["sources"] if src["id"] in cited],
        "withheld": len(result["sentences"]) - len(sentences),
    }


def assist_routes(service: AssistService) -> list[Guarded]:
    """`POST /assist/diagnoses`, `/assist/treatments`, `/assist/ask` (the API's bearer auth)."""

    async def admit(
        request: Request, model: type[PatientRequest]
    ) -> tuple[PatientRequest, Chart] | JSONResponse:
        try:
            body = model.model_validate_json(await request.body())
        except ValidationError as exc:
            kind = exc.errors()[0]["type"]
            return problem(
                400 if kind == "json_invalid" else 422, f"invalid request: {exc.error_count()} error(s)"
            )
        chart = await service.chart(patient_of(request, body.patient_id))
        if not chart.resources:
            return problem(404, "no record of this patient in the assistance stage")
        # The rules and the generator see only what the caller may read (the answers are
        # filtered again by what they cite).
        access = caller(request)
        readable_chart = Chart(
            chart.patient_id,
            {ref: r for ref, r in chart.resources.items() if access and access.reads(ref.split("/", 1)[0])},
        )
        return body, readable_chart

    async def diagnoses(request: Request) -> JSONResponse:
        started = time.perf_counter()
        admitted = await admit(request, PatientRequest)
        if isinstance(admitted, JSONResponse):
            return admitted
        _, chart = admitted
        found = service.diagnoses(service.facts(chart))
        for s in found:
            SUGGESTIONS.labels("diagnosis", s.rule.id).inc()
        ASSIST_SECONDS.labels("diagnoses").observe(time.perf_counter() - started)
        shown = _visible(request, [s.model_dump(mode="json") for s in found], chart)
        return JSONResponse({"suggestions": shown})

    async def treatments(request: Request) -> JSONResponse:
        started = time.perf_counter()
        admitted = await admit(request, PatientRequest)
        if isinstance(admitted, JSONResponse):
            return admitted
        _, chart = admitted
        f = service.facts(chart)
        found = service.treatments(f, service.diagnoses(f))
        for s in found:
            SUGGESTIONS.labels("treatment", s.rule.id).inc()
        ASSIST_SECONDS.labels("treatments").observe(time.perf_counter() - started)
        return JSONResponse({"suggestions": _visible(request, [_public_treatment(s) for s in found], chart)})

    async def ask(request: Request) -> JSONResponse:
        started = time.perf_counter()
        admitted = await admit(request, AskRequest)
        if isinstance(admitted, JSONResponse):
            return admitted
        body, chart = admitted
        assert isinstance(body, AskRequest)  # noqa: S101 - admit parsed it with AskRequest
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(
                loop.run_in_executor(service.executor, service.ask, chart, body.question),
                service.ask_timeout_s,
            )
        except TimeoutError:
            log.warning("assist: answer took longer than %.0f s", service.ask_timeout_s)
            return problem(503, "the answer took too long; retry", {"Retry-After": RETRY_AFTER_S})
        except Exception as exc:  # a model or retrieval failure: no answer rather than an uncited one
            log.warning("assist: no answer (%s)", type(exc).__name__)
            return problem(503, "the generator is unavailable; retry", {"Retry-After": RETRY_AFTER_S})
        ASSIST_SECONDS.labels("ask").observe(time.perf_counter() - started)
        return JSONResponse(_visible_answer(request, result, chart))

    return [
        Guarded("/assist/diagnoses", diagnoses, methods=["POST"], need=ASSIST_READ),
        Guarded("/assist/treatments", treatments, methods=["POST"], need=ASSIST_READ),
        Guarded("/assist/ask", ask, methods=["POST"], need=ASSIST_READ),
    ]


@dataclass(frozen=True)
class AssistHooks:
    """One CDS Hooks service of the stage (`kernel.cds_hooks.HookService`)."""

    service: AssistService
    id: str

    @property
    def hook(self) -> str:
        """The hook it answers."""
        return cards.HOOKS[self.id]

    def definition(self) -> dict[str, Any]:
        """Its discovery entry."""
        return next(d for d in cards.definitions() if d["id"] == self.id)

    async def cards(self, key: str, patient_id: str, context: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Cards for one call (see `kernel.cds_hooks.HookService`)."""
        chart = await self.service.chart(key)
        if not chart.resources:
            return []
        f = self.service.facts(chart)
        suggested = self.service.diagnoses(f)
        if self.id == cards.DIAGNOSES:
            return [cards.diagnosis_card(s, key, patient_id) for s in suggested]
        if self.id == cards.TREATMENTS:
            return [cards.treatment_card(s, patient_id) for s in self.service.treatments(f, suggested)]
        out = []
        orders, _ = draft_orders(
            context, selected_only=self.id == cards.ORDER_SELECT, validate={"MedicationRequest"}
        )
        for order in (o for o in orders if o["resourceType"] == "MedicationRequest"):
            text = _medication_text(order)
            advice = review_order(f, suggested, text) if text else None
            if advice is not None:
                out.append(cards.order_card(advice, order, key, patient_id))
        return out


def _medication_text(order: Mapping[str, Any]) -> str:
    concept = order.get("medicationCodeableConcept") or {}
    texts = [concept.get("text")] + [c.get("display") for c in concept.get("coding", [])]
    return next((str(t) for t in texts if t), "")


def register_assist(
    broker: KafkaBroker,
    topics: Topics,
    service: AssistService,
    *,
    group_id: str = "assist",
    max_records: int = 64,
    batch_timeout_ms: int = 50,
    consumer: StageConsumer = STAGE_CONSUMER,
    committer: BatchCommitter | None = None,
    listener: ConsumerRebalanceListener | None = None,
) -> None:
    """Subscribe the assistance stage to the normalized FHIR topic and to clinician feedback.
    ``committer`` finishes each batch of chart changes (default: changes confirmed, then offsets);
    ``listener`` restores assigned partitions' charts before their records are processed."""
    done = committer or BatchCommitter(broker, group_id=group_id)

    @fhir_batches(
        broker,
        topics,
        stage="assist",
        group_id=group_id,
        consumer=consumer,
        max_records=max_records,
        timeout_ms=batch_timeout_ms,
        listener=listener,
    )
    async def keep_charts(msg: KafkaMessage, parsed: Parsed, letters: list[DeadLetter]) -> None:
        changes = [  # offset order: a patient's chart changes in turn
            change
            for record, one in parsed
            for change in service.store.changes(one.patient_id, one.resources, record.partition)
        ]
        outgoing = [
            *(dead_letter_record(topics, letter) for letter in letters),
            *changelog_records(topics.assist_charts, changes),
        ]
        written = await done.commit(msg, outgoing, stage="assist", backoff_s=RETRY_BACKOFF_S)
        if written is not None:
            await asyncio.to_thread(service.store.save, confirmed(changes, written))
            counted_dead_letters(letters)

    @broker.subscriber(topics.feedback, group_id=f"{group_id}-feedback", **consumer)
    async def write_back(msg: KafkaMessage) -> None:
        record = single_record(msg)
        try:
            feedback = ClinicianFeedback.model_validate_json(record.value or b"")
        except ValidationError as exc:
            letter = dead_letter_for(exc, record, stage="assist")
            await dead_letter_and_commit(msg, broker, topics, letter, backoff_s=RETRY_BACKOFF_S)
            return

        async def effects() -> None:
            if not service.writeback:
                return
            for condition in await accepted_conditions(service, feedback):
                body = json.dumps(condition, separators=(",", ":")).encode()
                headers = {"resource_type": "Condition", "rule_id": feedback.rule_id or ""}
                await publish_in_order(
                    broker, [Outgoing(topics.outbound_fhir, body, feedback.patient_id.encode(), headers)]
                )
                WRITTEN_BACK.inc()

        await commit_after(msg, effects, stage="assist", backoff_s=RETRY_BACKOFF_S)


async def accepted_conditions(service: AssistService, feedback: ClinicianFeedback) -> list[dict[str, Any]]:
    """The provisional Conditions a feedback accepts (its "add to the problem list" suggestions)."""
    if feedback.outcome != "accepted" or not (feedback.rule_id or "").startswith("dx-"):
        return []
    if not feedback.accepted_suggestions:
        return []
    chart = await service.chart(feedback.patient_id)
    if not chart.resources:
        return []
    wanted = set(feedback.accepted_suggestions)
    patient = chart.patient()
    ident = chart_identifier(patient) if patient is not None else None
    subject = patient_reference(str((patient or {}).get("id") or feedback.patient_id), ident)
    found = [
        cards.provisional_condition(s, feedback.patient_id, feedback.patient_id, subject)
        for s in service.diagnoses(service.facts(chart))
        if cards.condition_suggestion_uuid(s) in wanted
    ]
    if len(found) < len(wanted):
        # The record changed since the card was shown (the problem was documented meanwhile, or a
        # newer result no longer meets the criteria): the EHR applied the card's own action.
        log.warning(
            "assist: %d accepted suggestion(s) of rule %s no longer held by the record; not written back",
            len(wanted) - len(found),
            feedback.rule_id,
        )
    return found


def openapi_paths() -> dict[str, dict[str, Any]]:
    """`/assist/*` for the OpenAPI document."""
    return {
        "/assist/diagnoses": {
            "post": operation(
                "Problems the record supports that the active problem list lacks (SNOMED CT, ICD-10-CM), "
                "each with rationale, evidence, citations and rule version.",
                body=PatientRequest,
                errors=("400", "401", "404", "422"),
            )
        },
        "/assist/treatments": {
            "post": operation(
                "Guideline first-line therapy for documented and suggested problems, checked against "
                "allergies, interactions, renal function, pregnancy and age; holds and monitoring.",
                body=PatientRequest,
                errors=("400", "401", "404", "422"),
            )
        },
        "/assist/ask": {
            "post": operation(
                "A cited answer to a clinician's question about the patient: every sentence cites the "
                "record or the knowledge base and passes the grounding guard; 503 when the generator fails.",
                body=AskRequest,
                errors=("400", "401", "404", "422", "503"),
            )
        },
    }
