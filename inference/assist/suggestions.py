"""What assistance answers: diagnosis and treatment suggestions, their evidence and citations,
and the guideline passages they cite. Pure.

Every suggestion names the rule (id and version) that made it, the record resources it rests on
(``Type/id`` with the text and date the clinician sees) and the knowledge-base passages that
hold its criteria: ``source`` is the document's file name in the knowledge base
(`indexer/knowledge_base`), ``section`` its heading and ``citation`` its ``Source:`` line, the
same three fields a knowledge search hit carries. Suggestion ids are deterministic (patient,
rule, code): the same record gives the same ids, so a card shown twice is one card.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from kernel.analytes import Reading
from kernel.events import deterministic_id

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"


class Coding(BaseModel):
    """A FHIR Coding."""

    model_config = ConfigDict(frozen=True)

    system: str
    code: str
    display: str


class Concept(BaseModel):
    """A FHIR CodeableConcept (codings only)."""

    model_config = ConfigDict(frozen=True)

    coding: tuple[Coding, ...]

    @property
    def display(self) -> str:
        """The first coding's display."""
        return self.coding[0].display


def concept(*codes: tuple[str, str, str]) -> Concept:
    """A concept from (system, code, display) triples."""
    return Concept(coding=tuple(Coding(system=s, code=c, display=d) for s, c, d in codes))


class EvidenceItem(BaseModel):
    """One record resource a suggestion rests on."""

    model_config = ConfigDict(frozen=True)

    resource_id: str  # Type/id
    text: str
    date: str | None = None


class Citation(BaseModel):
    """One knowledge-base passage: document file name, section heading, its Source line."""

    model_config = ConfigDict(frozen=True)

    source: str
    section: str
    citation: str


class RuleRef(BaseModel):
    """The rule that made a suggestion."""

    model_config = ConfigDict(frozen=True)

    id: str
    version: str


class DiagnosisSuggestion(BaseModel):
    """A problem the record supports that the active problem list does not hold."""

    model_config = ConfigDict(frozen=True)

    id: str
    family: str
    code: Concept
    status: Literal["suspected"] = "suspected"
    rationale: str
    evidence: tuple[EvidenceItem, ...]
    citations: tuple[Citation, ...]
    rule: RuleRef


Kind = Literal["start", "hold", "adjust-dose", "monitor", "order-test"]


class TreatmentSuggestion(BaseModel):
    """A medication to start, hold or adjust, or a test to order, for one of the patient's problems."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: str
    medication: Concept | None = None  # RxNorm ingredient; None for a test without a drug
    for_: Concept = Field(alias="for")
    kind: Kind
    dose: str = ""  # a usual starting dose, as the guideline states it
    test: Concept | None = None  # LOINC, for order-test and monitor
    rationale: str
    personalisation: tuple[str, ...] = ()
    alternatives: tuple[Concept, ...] = ()
    evidence: tuple[EvidenceItem, ...] = ()
    citations: tuple[Citation, ...]
    rule: RuleRef


def suggestion_id(patient_id: str, rule_id: str, code: str) -> str:
    """The deterministic id of one suggestion."""
    return deterministic_id("Suggestion", patient_id, rule_id, code)


def reading_evidence(reading: Reading, label: str) -> EvidenceItem:
    """A reading as evidence: ``HbA1c 6.8 %`` with its date."""
    return EvidenceItem(
        resource_id=reading.ref, text=f"{label} {reading.as_sent}", date=reading.at.date().isoformat()
    )


# The knowledge-base passages the rules cite: (file, section) → the Source line that file gives
# that section. tests/unit/inference/assist check each against the documents themselves.
_ADA = "American Diabetes Association Professional Practice Committee."
_ADA_DX = (
    f"{_ADA} 2. Diagnosis and Classification of Diabetes: Standards of Care in Diabetes—2025. "
    "Diabetes Care. 2025;48(Suppl. 1)."
)
_ACC_BP = (
    "Whelton PK, Carey RM, Aronow WS, et al. 2017 ACC/AHA/AAPA/ABC/ACPM/AGS/APhA/ASH/ASPC/NMA/PCNA Guideline "
    "for the Prevention, Detection, Evaluation, and Management of High Blood Pressure in Adults. "
    "Hypertension. 2018;71(6):e13-e115."
)
_KDIGO = (
    "Kidney Disease: Improving Global Outcomes (KDIGO) CKD Work Group. KDIGO 2024 Clinical Practice "
    "Guideline for the Evaluation and Management of Chronic Kidney Disease. Kidney International. "
    "2024;105(4S):S117-S314."
)
_ACC_CHOL = (
    "Grundy SM, Stone NJ, Bailey AL, et al. 2018 AHA/ACC/AACVPR/AAPA/ABC/ACPM/ADA/AGS/APhA/ASPC/NLA/PCNA "
    "Guideline on the Management of Blood Cholesterol. Circulation. 2019;139(25):e1082-e1143."
)
_ATP3 = (
    "Expert Panel on Detection, Evaluation, and Treatment of High Blood Cholesterol in Adults. Third Report "
    "of the National Cholesterol Education Program (NCEP) Adult Treatment Panel III final report. "
    "Circulation. 2002;106(25):3143-3421."
)
_CDC_BMI = (
    "Centers for Disease Control and Prevention. Adult BMI Categories; Child and Teen BMI Categories. "
    "Atlanta: CDC; 2024. Reference for children: Kuczmarski RJ, Ogden CL, Guo SS, et al. 2000 CDC Growth "
    "Charts for the United States: methods and development. Vital Health Stat 11. 2002;(246):1-190."
)
_WHO = (
    "World Health Organization. Guideline on haemoglobin cutoffs to define anaemia in individuals and "
    "populations. Geneva: World Health Organization; 2024."
)
_THYROID_DX = (
    "Garber JR, Cobin RH, Gharib H, et al. Clinical practice guidelines for hypothyroidism in adults: "
    "cosponsored by the American Association of Clinical Endocrinologists and the American Thyroid "
    "Association. Thyroid. 2012;22(12):1200-1235."
)
_THYROID_TX = (
    "Jonklaas J, Bianco AC, Bauer AJ, et al. Guidelines for the treatment of hypothyroidism: prepared by "
    "the American Thyroid Association task force on thyroid hormone replacement. Thyroid. "
    "2014;24(12):1670-1751."
)
_ALLERGY = (
    "Khan DA, Banerji A, Blumenthal KG, et al. Drug allergy: a 2022 practice parameter update. Journal of "
    "Allergy and Clinical Immunology. 2022;150(6):1333-1393."
)
PASSAGES: Mapping[str, Citation] = {
    key: Citation(source=source, section=section, citation=text)
    for key, (source, section, text) in {
        "ada-diabetes": ("ada-diabetes.md", "Diagnosis of diabetes", _ADA_DX),
        "ada-prediabetes": ("ada-diabetes.md", "Prediabetes", _ADA_DX),
        "ada-metformin": (
            "ada-diabetes.md",
            "First-line therapy for type 2 diabetes",
            f"{_ADA} 9. Pharmacologic Approaches to Glycemic Treatment: Standards of Care in "
            "Diabetes—2025. Diabetes Care. 2025;48(Suppl. 1).",
        ),
        "ada-hba1c": (
            "ada-diabetes.md",
            "HbA1c monitoring",
            f"{_ADA} 6. Glycemic Goals and Hypoglycemia: Standards of Care in Diabetes—2025. Diabetes "
            "Care. 2025;48(Suppl. 1).",
        ),
        "bp-categories": ("acc-aha-hypertension.md", "Blood pressure categories", _ACC_BP),
        "bp-first-line": ("acc-aha-hypertension.md", "First-line agents", _ACC_BP),
        "bp-comorbid": (
            "acc-aha-hypertension.md",
            "Hypertension with diabetes or chronic kidney disease",
            _ACC_BP,
        ),
        "ckd-definition": ("kdigo-ckd.md", "Definition", _KDIGO),
        "ckd-gfr": ("kdigo-ckd.md", "GFR categories", _KDIGO),
        "ckd-albuminuria": ("kdigo-ckd.md", "Albuminuria categories", _KDIGO),
        "ckd-raas-monitoring": ("kdigo-ckd.md", "Monitoring after starting an ACE inhibitor or ARB", _KDIGO),
        "who-anaemia": ("who-anaemia.md", "Thresholds by age, sex and pregnancy", _WHO),
        "lipid-classes": ("acc-aha-cholesterol.md", "Classification of lipid levels", _ATP3),
        "statin-intensity": ("acc-aha-cholesterol.md", "Statin intensity by risk", _ACC_CHOL),
        "triglycerides": ("acc-aha-cholesterol.md", "Hypertriglyceridemia", _ACC_CHOL),
        "bmi-adults": ("obesity-bmi.md", "Adults", _CDC_BMI),
        "bmi-children": ("obesity-bmi.md", "Children and adolescents", _CDC_BMI),
        "thyroid-diagnosis": ("hypothyroidism.md", "Diagnosis", _THYROID_DX),
        "thyroid-treatment": ("hypothyroidism.md", "Treatment", _THYROID_TX),
        "drug-allergy": ("drug-allergy.md", "Recorded allergies and drug choice", _ALLERGY),
    }.items()
}


def cite(*keys: str) -> tuple[Citation, ...]:
    """The passages named by ``keys``."""
    return tuple(PASSAGES[k] for k in keys)
