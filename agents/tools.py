"""The agent tools: their inputs, who may call them for which patient, and the audit record (pure).

An agent holds a token scoped SMART-style to patients: a JWT whose ``patient`` claim (one id)
or ``patients`` claim (a list) names them, as FHIR Patient ids or ``authority|identifier``,
and whose ``scope`` claim grants ``patient/*.read`` (or ``patient/*.rs``) for the read tools
and ``patient/DocumentReference.write`` (or ``.c``, ``patient/*.write``) for ``draft_note``.
A token without a patient claim calls no patient tool; the service API token is not an
agent token. Every call, allowed or refused, becomes a FHIR AuditEvent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kernel.audit import Action, Outcome
from kernel.audit import audit_event as kernel_audit_event
from kernel.identity import resolve_patient

PatientId = Annotated[str, StringConstraints(min_length=1, max_length=256)]
TypeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{1,64}$")]
Question = Annotated[str, StringConstraints(min_length=1, max_length=2000)]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SearchRecordArgs(_Args):
    """Search one patient's record."""

    patient_id: PatientId = Field(description="FHIR Patient id or `authority|identifier`.")
    question: Question
    k: int = Field(default=5, ge=1, le=20)
    types: list[TypeName] = Field(default_factory=list, description="Only these resource types.")
    since: datetime | None = None
    until: datetime | None = None


class TimelineArgs(_Args):
    """One patient's resources, newest first."""

    patient_id: PatientId
    types: list[TypeName] = Field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=50, ge=1, le=200)


class KnowledgeArgs(_Args):
    """Search the medical knowledge base (no patient data)."""

    question: Question
    k: int = Field(default=3, ge=1, le=10)


class AlertsArgs(_Args):
    """One patient's current decision-support alerts."""

    patient_id: PatientId


class DraftArgs(_Args):
    """Ask for a draft note (preliminary: a clinician signs it or not)."""

    patient_id: PatientId
    type: Literal["discharge-summary", "progress-note", "lab-interpretation"]
    anchor: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")] | None = Field(
        default=None, description="Encounter or DiagnosticReport id; unset: the latest."
    )


class AssistArgs(_Args):
    """Diagnosis or treatment suggestions for one patient."""

    patient_id: PatientId


class AskArgs(_Args):
    """A cited answer to a question about one patient."""

    patient_id: PatientId
    question: Annotated[str, StringConstraints(min_length=3, max_length=1000)]


Access = Literal["read", "write", "none"]


@dataclass(frozen=True, slots=True)
class Tool:
    """One tool: its name, what it does, its input model and the access it needs."""

    name: str
    description: str
    args: type[_Args]
    access: Access

    def input_schema(self) -> dict[str, Any]:
        """The JSON schema of the tool's arguments."""
        return self.args.model_json_schema()


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "search_patient_record",
            "Search one patient's record (notes, results, medications, problems); every hit names the "
            "resource it comes from (Type/id) to cite.",
            SearchRecordArgs,
            "read",
        ),
        Tool(
            "patient_timeline",
            "One patient's record as a timeline, newest first, optionally by type and time window.",
            TimelineArgs,
            "read",
        ),
        Tool(
            "search_knowledge",
            "Search the medical knowledge base (guidelines, drug facts); passages come with citations.",
            KnowledgeArgs,
            "none",
        ),
        Tool(
            "active_alerts",
            "One patient's current decision-support alerts, most severe first, with their evidence.",
            AlertsArgs,
            "read",
        ),
        Tool(
            "suggest_diagnoses",
            "Problems one patient's record supports that the active problem list lacks (SNOMED CT, "
            "ICD-10-CM), each with its criteria, the results behind it (Type/id) and the guideline it cites.",
            AssistArgs,
            "read",
        ),
        Tool(
            "suggest_treatments",
            "Guideline first-line therapy for one patient's problems, checked against allergies, "
            "interactions, renal function, pregnancy and age; holds and monitoring due; cited.",
            AssistArgs,
            "read",
        ),
        Tool(
            "ask_about_patient",
            "A cited answer to a question about one patient: every sentence cites record resources or "
            "knowledge passages; nothing the record does not hold.",
            AskArgs,
            "read",
        ),
        Tool(
            "draft_note",
            "Draft a note (discharge summary, progress note, lab interpretation) from the chart; the "
            "draft is preliminary and cites its sources.",
            DraftArgs,
            "write",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Scope:
    """What one agent token allows: patients (stream keys) and read / write access."""

    patients: frozenset[str]
    read: bool
    write: bool

    def allows(self, tool: Tool, patient: str | None) -> str | None:
        """None when allowed, else why not (no patient data in the text)."""
        if tool.access == "none":
            return None
        if not self.patients:
            return "this token is not scoped to a patient (a `patient` claim is needed)"
        if patient not in self.patients:
            return "the patient is outside this token's scope"
        if tool.access == "read" and not self.read:
            return "this token's scope does not grant patient/*.read"
        if tool.access == "write" and not self.write:
            return "this token's scope does not grant patient/DocumentReference.write"
        return None


_READ = {"patient/*.read", "patient/*.rs", "patient/*.r", "patient/*.*", "patient/*.cruds"}
_WRITE = {
    "patient/DocumentReference.write",
    "patient/DocumentReference.c",
    "patient/DocumentReference.cu",
    "patient/DocumentReference.*",
    "patient/*.write",
    "patient/*.*",
    "patient/*.cruds",
}


def scope_of(claims: Mapping[str, Any] | None) -> Scope:
    """The scope a token's claims grant (nothing for a token without claims)."""
    if not claims:
        return Scope(frozenset(), read=False, write=False)
    named: list[str] = []
    if isinstance(claims.get("patient"), str):
        named.append(claims["patient"])
    listed = claims.get("patients")
    if isinstance(listed, list):
        named += [p for p in listed if isinstance(p, str)]
    granted = set(str(claims.get("scope", "")).split())
    return Scope(
        frozenset(resolve_patient(p) for p in named if p),
        read=bool(granted & _READ),
        write=bool(granted & _WRITE),
    )


def patient_of(args: _Args) -> str | None:
    """The stream key of the patient a call is about (None for the knowledge base)."""
    raw = getattr(args, "patient_id", None)
    return resolve_patient(raw) if isinstance(raw, str) else None


_ACTION: dict[Access, Action] = {"read": "E", "none": "E", "write": "C"}
_OUTCOME: dict[str, Outcome] = {"allowed": "0", "refused": "4", "failed": "8"}


def audit_event(
    *,
    tool: str,
    access: Access,
    principal: str,
    patient: str | None,
    arguments: Mapping[str, Any],
    outcome: Literal["allowed", "refused", "failed"],
    detail: str,
    disclosed: Iterable[str],
    at: datetime,
    trace_id: str,
    address: str | None = None,
) -> dict[str, Any]:
    """The FHIR R4 AuditEvent of one tool call: who, which patient, what was disclosed."""
    return kernel_audit_event(
        principal=principal,
        action=_ACTION[access],
        what=tool,
        patient=patient,
        resources=disclosed,
        outcome=_OUTCOME[outcome],
        detail=detail,
        at=at,
        trace_id=trace_id,
        observer="clinstream agent tools",
        address=address,
        query=arguments,
    )


def disclosed_refs(result: Mapping[str, Any]) -> list[str]:
    """The resources a tool's answer names (what the AuditEvent lists as disclosed)."""
    refs: list[str] = []
    for item in result.get("results", []):
        if isinstance(item, Mapping):
            rid, kind = item.get("resource_id"), item.get("resource_type")
            if isinstance(rid, str):
                refs.append(rid if "/" in rid else f"{kind}/{rid}")
            refs += [e for e in item.get("evidence", []) if isinstance(e, str)]
            refs += [
                e["resource_id"]
                for e in item.get("evidence", [])
                if isinstance(e, Mapping) and isinstance(e.get("resource_id"), str)
            ]
    answer = result.get("answer")
    if isinstance(answer, Mapping):
        refs += [
            c
            for s in answer.get("sentences", [])
            if isinstance(s, Mapping)
            for c in s.get("citations", [])
            if isinstance(c, str) and not c.startswith("kb:")
        ]
    draft = result.get("draft")
    if isinstance(draft, Mapping) and isinstance(draft.get("id"), str):
        refs.append(f"DocumentReference/{draft['id']}")
    return refs


def openapi(base: str = "/agent/tools") -> dict[str, Any]:
    """An OpenAPI 3.1 document: one POST path per tool, its body the tool's JSON schema."""
    paths = {}
    for tool in TOOLS.values():
        paths[f"{base}/{tool.name}"] = {
            "post": {
                "operationId": tool.name,
                "summary": tool.description,
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": tool.input_schema()}},
                },
                "responses": {
                    "200": {"description": "The tool's answer (`results`, `answer`, or `draft`)."},
                    "401": {"description": "Missing or invalid bearer token."},
                    "403": {"description": "Outside the token's patient scope or access."},
                    "422": {"description": "Arguments do not match the schema."},
                    "503": {"description": "The backend or the audit log is unavailable."},
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {"title": "clinstream agent tools", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
