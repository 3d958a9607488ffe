"""One patient's chart and the clinical picture drawn from it: the problem list and the
medication courses. Pure.

Drafts, diagnostic assistance, treatment suggestions and cited answers all read the patient
through these views, so a problem is current or past, and a drug one course or several, the same
way everywhere.

- `Chart`: the patient's current resources by reference (``Type/id``); `apply` merges records
  (the newest version wins, entered-in-error leaves).
- `problem_list`: each Condition classified. *Current* or *past*: from ``clinicalStatus`` and
  ``abatement[x]``, then from the category: a problem-list item is longitudinal, an encounter
  diagnosis belongs to its encounter (past once that encounter is finished, or older than
  `ACUTE_WINDOW` when the encounter is not in the chart) unless the disorder is chronic by
  nature. *Kind*: a disorder or clinical finding is a problem; a situation ("History of …") or
  a social or administrative finding (education, employment, housing, risk activity …) is not.
- `medication_courses`: MedicationRequests collapsed into courses, one per drug and dose:
  first and last order, whether any order is still active, every order cited.

The SNOMED CT semantic tag in a display (``(disorder)``, ``(finding)``, ``(situation)``) is
used where the sender wrote it; displays without one (older Synthea, most HL7 v2 feeds) are
classified by their words, and an unknown display is a problem (a problem list errs toward
showing).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kernel.rendering import concept_text, quantity

_GONE = frozenset({"entered-in-error", "cancelled", "revoked"})
_PAST_STATUS = frozenset({"inactive", "resolved", "remission"})
_ACTIVE_ORDER = frozenset({"active", "on-hold", "draft"})
_OPEN_ENCOUNTER = frozenset({"planned", "arrived", "triaged", "in-progress", "onleave"})
ACUTE_WINDOW = timedelta(days=90)
"""How long an encounter diagnosis of an encounter the chart does not hold stays current."""

SNOMED = "http://snomed.info/sct"
_TAG = re.compile(r"\((?P<tag>[a-z /]+)\)\s*$")
# Words of chronic disorders: an encounter diagnosis of one of these stays on the list.
_CHRONIC = re.compile(
    r"chronic|diabet|hypertens|kidney disease|renal disease|hyperlipid|hypercholesterol|"
    r"hypertriglycerid|dyslipid|hypothyroid|hyperthyroid|obes|prediabet|asthma|"
    r"pulmonary disease|emphysema|heart failure|coronary|atrial fibrillation|epilep|seizure disorder|"
    r"alzheimer|dementia|parkinson|osteoporo|osteoarthritis|rheumatoid|anemia|anaemia|"
    r"metabolic syndrome|hiv|hepatitis [bc]|cirrhosis|neoplasm|carcinoma|cancer|lymphoma|leukemia|"
    r"depress|bipolar|schizo|gout|migraine|allergic rhinitis|atopic|psoria|"
    r"multiple sclerosis|sclerosis|stage \d|neuropathy|retinopathy|nephropathy",
    re.IGNORECASE,
)
# Social, administrative and behavioural findings: true of the patient, not a problem to treat.
_SOCIAL = re.compile(
    r"education|employ|labor force|labour force|housing|homeless|transport|social|isolation|"
    r"criminal|violence|abuse|income|insurance|refugee|stress\b|risk activity|"
    r"medication review|received|reports of|lack of access|unsatisfactory|"
    r"contact with|limited social|part-time|full-time|not in labo|misuses|"
    r"served in armed forces|military|prison|migrant|dental care|sexual orientation",
    re.IGNORECASE,
)
_SITUATION = re.compile(r"^\s*(history of|h/o|status post|s/p|family history)\b", re.IGNORECASE)

Status = Literal["current", "past"]
Kind = Literal["disorder", "finding", "social", "situation"]


@dataclass(frozen=True, slots=True)
class Chart:
    """One patient's current resources by reference (``Type/id``)."""

    patient_id: str
    resources: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    def of(self, *kinds: str) -> list[dict[str, Any]]:
        """Resources of the given types, in reference order (deterministic)."""
        return [r for ref, r in sorted(self.resources.items()) if r.get("resourceType") in kinds]

    def patient(self) -> dict[str, Any] | None:
        """The Patient resource, when the chart holds one."""
        patients = self.of("Patient")
        return patients[0] if patients else None


def ref_of(resource: Mapping[str, Any]) -> str:
    """``Type/id`` of a resource."""
    return f"{resource['resourceType']}/{resource['id']}"


Merges = dict[str, dict[str, Any] | None]
"""What merging resources into a chart does, by reference: the resource, or None when it leaves."""


def merges(resources: Iterable[dict[str, Any]]) -> Merges:
    """What merging ``resources`` does: a resource replaces its earlier version (the last one
    given wins); one whose status says it was entered in error (or cancelled) leaves the chart."""
    return {
        ref_of(r): (None if retired(r) else r) for r in resources if r.get("id") and r.get("resourceType")
    }


def laid_over(chart: Chart, changed: Merges) -> Chart:
    """``chart`` with ``changed`` (`merges`) applied."""
    merged = dict(chart.resources)
    for ref, resource in changed.items():
        if resource is None:
            merged.pop(ref, None)
        else:
            merged[ref] = resource
    return Chart(chart.patient_id, merged)


def apply(chart: Chart, resources: Iterable[dict[str, Any]]) -> Chart:
    """``chart`` with ``resources`` merged in (`merges`)."""
    return laid_over(chart, merges(resources))


def retired(resource: Mapping[str, Any]) -> bool:
    """A resource whose status says it was entered in error, cancelled or refuted."""
    return _status(resource) in _GONE


def _status(resource: Mapping[str, Any]) -> str:
    status = resource.get("status")
    if isinstance(status, str):
        return status
    for key in ("clinicalStatus", "verificationStatus"):
        concept = resource.get(key) or {}
        for coding in concept.get("coding", []):
            if coding.get("code") in ("entered-in-error", "refuted"):
                return "entered-in-error"
    return ""


def coded(concept: Mapping[str, Any] | None, system: str) -> str:
    """The first code of ``system`` in a CodeableConcept, or ``""``."""
    for coding in (concept or {}).get("coding", []):
        if coding.get("system") == system and coding.get("code"):
            return str(coding["code"])
    return ""


def instant(value: Any) -> datetime | None:
    """A FHIR date or dateTime as an aware datetime (a date is its midnight UTC); None when
    absent or unreadable."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    if len(text) == 4:
        text += "-01-01"
    elif len(text) == 7:
        text += "-01"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Problem:
    """One Condition as the problem list shows it."""

    ref: str
    text: str
    snomed: str  # the SNOMED CT code, or ""
    status: Status
    kind: Kind
    onset: datetime | None
    abated: datetime | None
    category: str  # problem-list-item, encounter-diagnosis, health-concern or ""
    chronic: bool

    @property
    def is_problem(self) -> bool:
        """A disorder or clinical finding (not a situation or social finding)."""
        return self.kind in ("disorder", "finding")

    @property
    def is_current_problem(self) -> bool:
        """What the active problem list shows."""
        return self.is_problem and self.status == "current"


def kind_of(text: str) -> Kind:
    """A Condition's kind from its display: the SNOMED CT semantic tag, else its words."""
    tag = _TAG.search(text)
    name = text[: tag.start()] if tag else text
    if (tag and tag["tag"] == "situation") or _SITUATION.search(name):
        return "situation"
    if _SOCIAL.search(name):
        return "social"
    if tag and tag["tag"] == "finding":
        return "finding"
    return "disorder"


def chronic_by_nature(text: str) -> bool:
    """A disorder that lasts once it is there (diabetes, hypertension, CKD …), by its words."""
    return bool(_CHRONIC.search(text))


def _category(condition: Mapping[str, Any]) -> str:
    for concept in condition.get("category", []):
        for coding in concept.get("coding", []):
            if coding.get("code") in ("problem-list-item", "encounter-diagnosis", "health-concern"):
                return str(coding["code"])
    return ""


def clinical_status(resource: Mapping[str, Any]) -> str:
    """The first code of ``clinicalStatus`` (Condition, AllergyIntolerance), or ``""``."""
    for coding in (resource.get("clinicalStatus") or {}).get("coding", []):
        if coding.get("code"):
            return str(coding["code"])
    return ""


def _abatement(condition: Mapping[str, Any]) -> tuple[datetime | None, bool]:
    """(when it abated, whether any abatement is stated)."""
    for key in ("abatementDateTime", "abatementString", "abatementAge", "abatementRange"):
        if key in condition:
            return instant(condition[key]) if key == "abatementDateTime" else None, True
    period = condition.get("abatementPeriod")
    if isinstance(period, Mapping):
        return instant(period.get("end") or period.get("start")), True
    return None, False


def ended(condition: Mapping[str, Any], at: datetime) -> bool:
    """A Condition over by ``at`` on its own evidence: clinicalStatus inactive, resolved or in
    remission, or an abatement at or before ``at`` (an abatement without a date counts)."""
    abated, has_abatement = _abatement(condition)
    return clinical_status(condition) in _PAST_STATUS or (has_abatement and (abated is None or abated <= at))


def _encounter_finished(chart: Chart, condition: Mapping[str, Any], at: datetime) -> bool | None:
    """Whether the Condition's encounter is over (None when the chart does not hold it)."""
    reference = str((condition.get("encounter") or {}).get("reference", ""))
    enc = chart.resources.get(reference) if reference.startswith("Encounter/") else None
    if enc is None:
        return None
    if enc.get("status") in _OPEN_ENCOUNTER:
        return False
    end = instant((enc.get("period") or {}).get("end"))
    if end is not None:
        return end <= at  # a chart read as of an earlier time sees the stay still open
    return enc.get("status") in ("finished", "cancelled")


def classify(chart: Chart, condition: Mapping[str, Any], at: datetime, *, encounter: str = "") -> Problem:
    """One Condition of ``chart`` as the problem list sees it at ``at``; a diagnosis of
    ``encounter`` (``Encounter/id``: the stay a discharge summary is about) stays current."""
    text = concept_text(condition.get("code")) or "Unnamed problem"
    onset = instant(condition.get("onsetDateTime") or (condition.get("onsetPeriod") or {}).get("start"))
    onset = onset or instant(condition.get("recordedDate"))
    abated, _ = _abatement(condition)
    category = _category(condition)
    chronic = chronic_by_nature(text)
    status: Status = "current"
    if ended(condition, at):
        status = "past"
    elif onset is not None and onset > at:
        status = "past"  # not yet: a chart read as of an earlier time
    elif category == "encounter-diagnosis" and not chronic:
        if encounter and (condition.get("encounter") or {}).get("reference") == encounter:
            finished: bool | None = False
        else:
            finished = _encounter_finished(chart, condition, at)
        if finished or (finished is None and (onset is None or at - onset > ACUTE_WINDOW)):
            status = "past"
    return Problem(
        ref=ref_of(condition),
        text=text,
        snomed=coded(condition.get("code"), SNOMED),
        status=status,
        kind=kind_of(text),
        onset=onset,
        abated=abated,
        category=category,
        chronic=chronic,
    )


def problem_list(chart: Chart, at: datetime, *, encounter: str = "") -> list[Problem]:
    """Every Condition of the chart classified at ``at`` (``encounter``: see `classify`): current
    problems first, newest onset first within each group."""
    problems = [classify(chart, c, at, encounter=encounter) for c in chart.of("Condition")]
    oldest = datetime.min.replace(tzinfo=UTC)
    problems.sort(key=lambda p: (not p.is_current_problem, -(p.onset or oldest).timestamp(), p.ref))
    return problems


def current_problems(chart: Chart, at: datetime, *, encounter: str = "") -> list[Problem]:
    """The active problem list: current disorders and clinical findings (``encounter``: see
    `classify`)."""
    return [p for p in problem_list(chart, at, encounter=encounter) if p.is_current_problem]


RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass(frozen=True, slots=True)
class Course:
    """Orders of one drug at one dose, collapsed: what a clinician calls a medication."""

    name: str
    rxnorm: str
    dose: str
    start: datetime | None  # the first order
    last: datetime | None  # the latest order
    active: bool  # an order is still active (or on hold, or a draft)
    stopped: datetime | None  # when an order says it ended (dispense validity end), if stated
    refs: tuple[str, ...]  # every order, oldest first

    @property
    def latest_ref(self) -> str:
        """The newest order of the course."""
        return self.refs[-1]


def medication_name(req: Mapping[str, Any]) -> str:
    """The drug an order names (its concept, or the display of its Medication reference)."""
    return concept_text(req.get("medicationCodeableConcept")) or str(
        (req.get("medicationReference") or {}).get("display") or ""
    )


def dose_text(req: Mapping[str, Any]) -> str:
    """The dose an order states (dosage text, else dose quantities)."""
    parts = []
    for dosage in req.get("dosageInstruction", []):
        if dosage.get("text"):
            parts.append(str(dosage["text"]))
            continue
        for dr in dosage.get("doseAndRate", []):
            if dr.get("doseQuantity"):
                parts.append(quantity(dr["doseQuantity"]))
    return "; ".join(p for p in parts if p)


def medication_courses(chart: Chart, at: datetime | None = None) -> list[Course]:
    """MedicationRequests (and MedicationStatements) collapsed into courses, newest first.

    Orders of the same drug (RxNorm code, else the name) at the same dose make one course; an
    order authored after ``at`` is not seen. A course is active while any of its orders is.
    """
    groups: dict[tuple[str, str], list[tuple[datetime | None, Mapping[str, Any]]]] = {}
    for req in chart.of("MedicationRequest", "MedicationStatement"):
        authored = instant(
            req.get("authoredOn")
            or req.get("effectiveDateTime")
            or (req.get("effectivePeriod") or {}).get("start")
            or req.get("dateAsserted")
        )
        if at is not None and authored is not None and authored > at:
            continue
        name = medication_name(req)
        rx = coded(req.get("medicationCodeableConcept"), RXNORM)
        key = (rx or name.lower().strip(), dose_text(req))
        groups.setdefault(key, []).append((authored, req))
    oldest = datetime.min.replace(tzinfo=UTC)
    courses = []
    for (_, dose), orders in groups.items():
        orders.sort(key=lambda o: (o[0] or oldest, ref_of(o[1])))
        first, latest = orders[0][1], orders[-1][1]
        ends = [
            instant(((o.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end"))
            or instant((o.get("effectivePeriod") or {}).get("end"))
            for _, o in orders
        ]
        known_ends = [e for e in ends if e is not None]
        courses.append(
            Course(
                name=medication_name(latest) or medication_name(first) or "Unnamed medication",
                rxnorm=coded(latest.get("medicationCodeableConcept"), RXNORM),
                dose=dose,
                start=orders[0][0],
                last=orders[-1][0],
                active=any(str(o.get("status", "")) in _ACTIVE_ORDER for _, o in orders),
                stopped=max(known_ends) if known_ends else None,
                refs=tuple(ref_of(o) for _, o in orders),
            )
        )
    courses.sort(key=lambda c: (not c.active, -(c.last or oldest).timestamp(), c.name))
    return courses


def age_at(chart: Chart, at: datetime) -> float | None:
    """The patient's age in years at ``at`` (None without a birth date)."""
    patient = chart.patient()
    born = instant((patient or {}).get("birthDate"))
    if born is None:
        return None
    return (at - born).days / 365.25


def sex_of(chart: Chart) -> str:
    """The administrative gender (``male``, ``female``, ``other``, ``unknown``), or ``""``."""
    return str((chart.patient() or {}).get("gender") or "")
