"""Diagnostic assistance: problems the record supports that the active problem list lacks. Pure.

Each rule reads the patient's facts (`inference.assist.facts`), applies the published criteria
its passages hold, and names the problem in SNOMED CT (as US problem lists and Synthea code it)
with its ICD-10-CM code. A family the active problem list already holds (by SNOMED code or by
the words of its display) is never suggested. Thresholds are the guidelines' own; none was fitted
to any dataset.

Rules and their criteria (the passage each cites):

- dx-obesity: adults (20 y and older) latest BMI 30 kg/m² or more; 2 to 19 years, BMI-for-age
  at or above the 95th percentile (CDC 2000 charts).
- dx-diabetes-t2: two abnormal results, HbA1c 6.5 % or more or fasting glucose 126 mg/dL or
  more, the latest result of that test abnormal (ADA).
- dx-prediabetes: latest HbA1c 5.7 to 6.4 % or fasting glucose 100 to 125 mg/dL, diabetes
  criteria not met (ADA).
- dx-hypertension: adults, the mean of the two latest occasions 130 systolic or 80 diastolic or
  more, staged (ACC/AHA 2017).
- dx-ckd: eGFR below 60, or albumin/creatinine 30 mg/g or more, on results more than 3 months
  apart with no normal result between, staged G and A (KDIGO 2024).
- dx-anemia: latest haemoglobin below the WHO 2024 threshold for age, sex and pregnancy.
- dx-hypercholesterolemia: latest LDL 160 or total cholesterol 240 mg/dL or more (ATP III
  "high"); with triglycerides of 200 or more, hyperlipidemia.
- dx-hypertriglyceridemia: the two latest triglycerides 175 mg/dL or more (ACC/AHA 2018).
- dx-hypothyroidism: the two latest TSH above 4.5 mIU/L with the latest free T4 below 0.8 ng/dL,
  or both 10 mIU/L or more (AACE/ATA 2012).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from decimal import Decimal

from inference.assist.facts import Facts, number, shown
from inference.assist.growth import bmi_percentile
from inference.assist.suggestions import (
    ICD10CM,
    SNOMED,
    Concept,
    DiagnosisSuggestion,
    RuleRef,
    cite,
    concept,
    reading_evidence,
    suggestion_id,
)
from kernel.analytes import Reading
from kernel.chart import Problem

CHRONIC = timedelta(days=90)  # KDIGO: "for more than 3 months"
D = Decimal

# What the active problem list already holds, by family: SNOMED codes and words of the display.
FAMILIES: Mapping[str, tuple[frozenset[str], re.Pattern[str]]] = {
    "obesity": (frozenset({"162864005", "414916001", "408512008", "414915002"}), re.compile(r"obes", re.I)),
    "diabetes": (
        frozenset({"44054006", "73211009", "46635009"}),
        re.compile(r"(?<!pre)diabet", re.I),
    ),
    "prediabetes": (
        frozenset({"15777000", "714628002", "9414007"}),
        re.compile(r"prediabet|impaired fasting|impaired glucose", re.I),
    ),
    "hypertension": (
        frozenset({"38341003", "59621000", "1201005", "10725009"}),
        re.compile(r"^(?!.*pulmonary).*hypertens", re.I),
    ),
    "ckd": (
        frozenset({"709044004", "431855005", "431856006", "433144002", "431857002", "433146000", "46177005"}),
        re.compile(r"chronic kidney|chronic renal|\bckd\b|diabetic renal|nephropathy|end.stage renal", re.I),
    ),
    "anemia": (frozenset({"271737000"}), re.compile(r"an(a)?emi", re.I)),
    "hyperlipidemia": (
        frozenset({"55822004", "13644009", "267432004", "398036000"}),
        re.compile(r"hyperlipid|hypercholesterol|dyslipid", re.I),
    ),
    "hypertriglyceridemia": (
        frozenset({"302870006", "55822004"}),
        re.compile(r"hypertriglycerid|hyperlipid|mixed dyslipid", re.I),
    ),
    "hypothyroidism": (
        frozenset({"40930008", "83664006"}),
        re.compile(r"hypothyroid|myx(o)?edema|hashimoto", re.I),
    ),
}
# A documented problem of the key family also rules out the suggestions of these families.
IMPLIES: Mapping[str, frozenset[str]] = {"diabetes": frozenset({"prediabetes"})}


def families_of(problem: Problem) -> frozenset[str]:
    """The families one documented problem belongs to."""
    out = {
        f for f, (codes, words) in FAMILIES.items() if problem.snomed in codes or words.search(problem.text)
    }
    for family in list(out):
        out |= IMPLIES.get(family, frozenset())
    return frozenset(out)


def documented(problems: Iterable[Problem]) -> frozenset[str]:
    """Every family the active problem list holds."""
    out: set[str] = set()
    for problem in problems:
        out |= families_of(problem)
    return frozenset(out)


def _suggest(
    f: Facts,
    rule: str,
    family: str,
    code: Concept,
    rationale: str,
    evidence: Sequence[tuple[Reading, str]],
    *passages: str,
) -> DiagnosisSuggestion:
    return DiagnosisSuggestion(
        id=suggestion_id(f.patient_id, rule, code.coding[0].code),
        family=family,
        code=code,
        rationale=rationale,
        evidence=tuple(reading_evidence(r, label) for r, label in evidence),
        citations=cite(*passages),
        rule=RuleRef(id=rule, version=VERSIONS[rule]),
    )


def obesity(f: Facts) -> DiagnosisSuggestion | None:
    """dx-obesity: BMI ≥ 30 in adults; BMI-for-age ≥ 95th percentile at 2–19 years (CDC)."""
    bmi = f.latest("bmi")
    if bmi is None or bmi.value is None or f.age is None or f.age < 2:
        return None
    if f.age >= 20:
        if bmi.value < 30:
            return None
        klass = 3 if bmi.value >= 40 else 2 if bmi.value >= 35 else 1
        code = concept(
            (SNOMED, "162864005", "Body mass index 30+ - obesity (finding)"),
            (ICD10CM, f"E66.81{klass}", f"Obesity, class {klass}"),
        )
        why = f"Latest BMI {shown(bmi)}: 30 kg/m² or more is obesity in adults (class {klass}, CDC)."
        return _suggest(f, "dx-obesity", "obesity", code, why, [(bmi, "BMI")], "bmi-adults")
    recorded = f.latest("bmi_percentile")
    if recorded is not None and recorded.value is not None and recorded.at >= bmi.at:
        percentile, evidence = float(recorded.value), [(recorded, "BMI percentile"), (bmi, "BMI")]
        source = f"BMI-for-age percentile recorded as {shown(recorded)}"
    else:
        age_then = f.age - (f.at - bmi.at).days / 365.25
        computed = bmi_percentile(float(bmi.value), sex=f.sex, age=age_then)
        if computed is None:
            return None
        percentile, evidence = computed, [(bmi, "BMI")]
        source = f"BMI {shown(bmi)}, at or above the 95th percentile for age and sex on the CDC 2000 charts"
    if percentile < 95:
        return None
    code = concept((SNOMED, "414916001", "Obesity (disorder)"), (ICD10CM, "E66.9", "Obesity, unspecified"))
    why = f"{source}: a BMI-for-age at or above the 95th percentile is obesity in children and teens (CDC)."
    return _suggest(f, "dx-obesity", "obesity", code, why, evidence, "bmi-children")


def _abnormal(series: Sequence[Reading], at_least: Decimal) -> list[Reading]:
    return [r for r in series if r.value is not None and r.value >= at_least]


def diabetes(f: Facts) -> DiagnosisSuggestion | None:
    """dx-diabetes-t2: two abnormal results (HbA1c ≥ 6.5 %, fasting glucose ≥ 126 mg/dL), the
    latest result of the test abnormal (ADA)."""
    found: list[tuple[Reading, str]] = []
    for analyte, label, limit in (
        ("hba1c", "HbA1c", D("6.5")),
        ("fasting_glucose", "Fasting glucose", D(126)),
    ):
        latest = f.latest(analyte)
        if latest is not None and latest.value is not None and latest.value >= limit:
            found += [(r, label) for r in _abnormal(f.series(analyte), limit)[-2:]]
    found.sort(key=lambda x: x[0].at)
    if len(found) < 2:
        return None
    shown_results = "; ".join(f"{label} {shown(r)}" for r, label in found[-2:])
    why = (
        f"Two abnormal results ({shown_results}) meet the ADA criteria for diabetes "
        "(HbA1c 6.5 % or more, fasting glucose 126 mg/dL or more, confirmed by a second result)."
    )
    code = concept(
        (SNOMED, "44054006", "Diabetes mellitus type 2 (disorder)"),
        (ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications"),
    )
    return _suggest(f, "dx-diabetes-t2", "diabetes", code, why, found[-2:], "ada-diabetes")


def prediabetes(f: Facts) -> DiagnosisSuggestion | None:
    """dx-prediabetes: latest HbA1c 5.7–6.4 % or fasting glucose 100–125 mg/dL (ADA)."""
    if diabetes(f) is not None:
        return None
    for analyte, label, low, high in (
        ("hba1c", "HbA1c", D("5.7"), D("6.5")),
        ("fasting_glucose", "Fasting glucose", D(100), D(126)),
    ):
        latest = f.latest(analyte)
        if latest is None or latest.value is None or not low <= latest.value < high:
            continue
        unit = "%" if analyte == "hba1c" else "mg/dL"
        why = (
            f"Latest {label} {shown(latest)} lies in the prediabetes range "
            f"({number(low)} to below {number(high)} {unit}, ADA)."
        )
        code = concept((SNOMED, "15777000", "Prediabetes (finding)"), (ICD10CM, "R73.03", "Prediabetes"))
        return _suggest(f, "dx-prediabetes", "prediabetes", code, why, [(latest, label)], "ada-prediabetes")
    return None


def _occasions(f: Facts, analyte: str) -> dict[str, list[Reading]]:
    by_day: dict[str, list[Reading]] = {}
    for r in f.series(analyte):
        by_day.setdefault(r.at.date().isoformat(), []).append(r)
    return by_day


def hypertension(f: Facts) -> DiagnosisSuggestion | None:
    """dx-hypertension: adults, the mean of the readings of the two latest occasions (days),
    stage 1 at 130/80, stage 2 at 140/90 (ACC/AHA 2017)."""
    if f.age is None or f.age < 18:
        return None
    systolic, diastolic = _occasions(f, "systolic_bp"), _occasions(f, "diastolic_bp")
    days = sorted(set(systolic) & set(diastolic))[-2:]
    if len(days) < 2:
        return None
    sys_values = [r.value for d in days for r in systolic[d] if r.value is not None]
    dia_values = [r.value for d in days for r in diastolic[d] if r.value is not None]
    mean_sys = sum(sys_values, D(0)) / len(sys_values)
    mean_dia = sum(dia_values, D(0)) / len(dia_values)
    if mean_sys >= 140 or mean_dia >= 90:
        stage = 2
    elif mean_sys >= 130 or mean_dia >= 80:
        stage = 1
    else:
        return None
    evidence = [(r, "Systolic BP") for d in days for r in systolic[d]] + [
        (r, "Diastolic BP") for d in days for r in diastolic[d]
    ]
    readings = "; ".join(f"{systolic[d][-1].as_sent}/{diastolic[d][-1].as_sent} on {d}" for d in days)
    why = (
        f"Blood pressure on the two latest occasions ({readings}) averages in stage {stage} hypertension "
        f"(ACC/AHA 2017: stage 1 from 130 systolic or 80 diastolic, stage 2 from 140 or 90 mm Hg)."
    )
    code = concept(
        (SNOMED, "38341003", "Hypertensive disorder, systemic arterial (disorder)"),
        (ICD10CM, "I10", "Essential (primary) hypertension"),
    )
    return _suggest(f, "dx-hypertension", "hypertension", code, why, evidence, "bp-categories")


def _chronic(
    series: Sequence[Reading], abnormal: Callable[[Decimal], bool]
) -> tuple[Reading, Reading] | None:
    """The first and latest of a run of abnormal results reaching back more than 3 months,
    with no normal result in between (KDIGO chronicity), the latest result abnormal."""
    if not series or series[-1].value is None or not abnormal(series[-1].value):
        return None
    latest = series[-1]
    first = latest
    for r in reversed(series[:-1]):
        if r.value is None or not abnormal(r.value):
            break
        first = r
    return (first, latest) if latest.at - first.at > CHRONIC else None


_G_STAGES = (
    (
        D(90),
        "1",
        "431855005",
        "Chronic kidney disease stage 1 (disorder)",
        "N18.1",
        "Chronic kidney disease, stage 1",
    ),
    (
        D(60),
        "2",
        "431856006",
        "Chronic kidney disease stage 2 (disorder)",
        "N18.2",
        "Chronic kidney disease, stage 2 (mild)",
    ),
    (
        D(45),
        "3a",
        "700378005",
        "Chronic kidney disease stage 3A (disorder)",
        "N18.31",
        "Chronic kidney disease, stage 3a",
    ),
    (
        D(30),
        "3b",
        "700379002",
        "Chronic kidney disease stage 3B (disorder)",
        "N18.32",
        "Chronic kidney disease, stage 3b",
    ),
    (
        D(15),
        "4",
        "431857002",
        "Chronic kidney disease stage 4 (disorder)",
        "N18.4",
        "Chronic kidney disease, stage 4 (severe)",
    ),
    (
        D(0),
        "5",
        "433146000",
        "Chronic kidney disease stage 5 (disorder)",
        "N18.5",
        "Chronic kidney disease, stage 5",
    ),
)


def ckd(f: Facts) -> DiagnosisSuggestion | None:
    """dx-ckd: eGFR < 60 or albumin/creatinine ≥ 30 mg/g for more than 3 months, staged by the
    latest eGFR (G1–G5) and albuminuria (A1–A3) (KDIGO 2024)."""
    low_gfr = _chronic(f.series("egfr"), lambda v: v < 60)
    albuminuria = _chronic(f.series("uacr"), lambda v: v >= 30)
    if low_gfr is None and albuminuria is None:
        return None
    egfr, acr = f.latest("egfr"), f.latest("uacr")
    g = next(
        (s for s in _G_STAGES if egfr is not None and egfr.value is not None and egfr.value >= s[0]), None
    )
    if g is None:
        return None  # albuminuria without any eGFR: stage unknown, a person should look
    a = ""
    if acr is not None and acr.value is not None:
        a = "A3" if acr.value > 300 else "A2" if acr.value >= 30 else "A1"
    evidence: list[tuple[Reading, str]] = []
    parts = []
    if low_gfr is not None:
        evidence += [(low_gfr[0], "eGFR"), (low_gfr[1], "eGFR")]
        parts.append(f"eGFR below 60 from {shown(low_gfr[0])} to {shown(low_gfr[1])}")
    if albuminuria is not None:
        evidence += [(albuminuria[0], "Albumin/creatinine"), (albuminuria[1], "Albumin/creatinine")]
        parts.append(
            f"albumin/creatinine 30 mg/g or more from {shown(albuminuria[0])} to {shown(albuminuria[1])}"
        )
    if egfr is not None and all(egfr.ref != r.ref for r, _ in evidence):
        evidence.append((egfr, "eGFR"))
    stage = f"G{g[1]}{a}"
    why = (
        f"{'; '.join(parts).capitalize()}: more than 3 months, so chronic kidney disease, stage {stage} "
        "(KDIGO 2024)."
    )
    code = concept((SNOMED, g[2], g[3]), (ICD10CM, g[4], g[5]))
    return _suggest(f, "dx-ckd", "ckd", code, why, evidence, "ckd-definition", "ckd-gfr", "ckd-albuminuria")


def anemia_threshold(f: Facts) -> tuple[Decimal, str] | None:
    """The WHO 2024 haemoglobin threshold (g/dL) for this patient and the group it is for."""
    age = f.age
    if age is None or age < 0.5:
        return None
    weeks = f.gestation_weeks()
    if weeks is not None:
        if weeks < 14:
            return D(11), "pregnancy, first trimester"
        if weeks < 28:
            return D("10.5"), "pregnancy, second trimester"
        return D(11), "pregnancy, third trimester"
    for below, threshold, group in (
        (2, D("10.5"), "children aged 6 to 23 months"),
        (5, D(11), "children aged 24 to 59 months"),
        (12, D("11.5"), "children aged 5 to 11 years"),
        (15, D(12), "adolescents aged 12 to 14 years"),
    ):
        if age < below:
            return threshold, group
    if f.sex == "female":
        return D(12), "non-pregnant women aged 15 and older"
    if f.sex == "male":
        return D(13), "men aged 15 and older"
    return None


def anemia(f: Facts) -> DiagnosisSuggestion | None:
    """dx-anemia: latest haemoglobin below the WHO 2024 threshold for age, sex and pregnancy."""
    hb = f.latest("hemoglobin")
    limit = anemia_threshold(f)
    if hb is None or hb.value is None or limit is None or hb.value >= limit[0]:
        return None
    why = (
        f"Latest haemoglobin {shown(hb)} is below {number(limit[0])} g/dL, the WHO 2024 threshold "
        f"for {limit[1]}."
    )
    code = concept((SNOMED, "271737000", "Anemia (disorder)"), (ICD10CM, "D64.9", "Anemia, unspecified"))
    return _suggest(f, "dx-anemia", "anemia", code, why, [(hb, "Haemoglobin")], "who-anaemia")


def hypercholesterolemia(f: Facts) -> DiagnosisSuggestion | None:
    """dx-hypercholesterolemia: latest LDL ≥ 160 or total cholesterol ≥ 240 mg/dL (ATP III
    "high"); hyperlipidemia when the latest triglycerides are ≥ 200 mg/dL as well."""
    ldl, total, tg = f.latest("ldl"), f.latest("total_cholesterol"), f.latest("triglycerides")
    high = [
        (r, label, limit)
        for r, label, limit in ((ldl, "LDL cholesterol", 160), (total, "Total cholesterol", 240))
        if r is not None and r.value is not None and r.value >= limit
    ]
    if not high:
        return None
    evidence = [(r, label) for r, label, _ in high if r is not None]
    named = "; ".join(
        f"{label} {shown(r)} (high from {limit} mg/dL)" for r, label, limit in high if r is not None
    )
    mixed = tg is not None and tg.value is not None and tg.value >= 200
    if mixed and tg is not None:
        evidence.append((tg, "Triglycerides"))
        named += f"; triglycerides {shown(tg)} (high from 200 mg/dL)"
        code = concept(
            (SNOMED, "55822004", "Hyperlipidemia (disorder)"),
            (ICD10CM, "E78.5", "Hyperlipidemia, unspecified"),
        )
    else:
        code = concept(
            (SNOMED, "13644009", "Hypercholesterolemia (disorder)"),
            (ICD10CM, "E78.00", "Pure hypercholesterolemia, unspecified"),
        )
    why = f"{named}: NCEP ATP III classes these as high."
    return _suggest(f, "dx-hypercholesterolemia", "hyperlipidemia", code, why, evidence, "lipid-classes")


def hypertriglyceridemia(f: Facts) -> DiagnosisSuggestion | None:
    """dx-hypertriglyceridemia: the two latest triglycerides ≥ 175 mg/dL (persistent, ACC/AHA 2018)."""
    last = f.series("triglycerides")[-2:]
    if len(last) < 2 or any(r.value is None or r.value < 175 for r in last):
        return None
    why = (
        f"Triglycerides {shown(last[0])} and {shown(last[1])}: persistently 175 mg/dL or more is "
        "moderate hypertriglyceridemia (ACC/AHA 2018)."
    )
    code = concept(
        (SNOMED, "302870006", "Hypertriglyceridemia (disorder)"), (ICD10CM, "E78.1", "Pure hyperglyceridemia")
    )
    evidence = [(r, "Triglycerides") for r in last]
    return _suggest(
        f, "dx-hypertriglyceridemia", "hypertriglyceridemia", code, why, evidence, "triglycerides"
    )


def hypothyroidism(f: Facts) -> DiagnosisSuggestion | None:
    """dx-hypothyroidism: the two latest TSH above 4.5 mIU/L with a low latest free T4 (overt),
    or both 10 mIU/L or more (AACE/ATA 2012)."""
    last = f.series("tsh")[-2:]
    if len(last) < 2 or any(r.value is None or r.value <= D("4.5") for r in last):
        return None
    ft4 = f.latest("free_t4")
    overt = ft4 is not None and ft4.value is not None and ft4.value < D("0.8") and ft4.at >= last[0].at
    persistent_high = all(r.value is not None and r.value >= 10 for r in last)
    if not overt and not persistent_high:
        return None
    evidence: list[tuple[Reading, str]] = [(r, "TSH") for r in last]
    why = f"TSH {shown(last[0])} and {shown(last[1])}, above the 4.5 mIU/L reference limit on repeat"
    if overt and ft4 is not None:
        evidence.append((ft4, "Free T4"))
        why += f", with free T4 {shown(ft4)} below its range: overt primary hypothyroidism (AACE/ATA)."
    else:
        why += ", and 10 mIU/L or more: hypothyroidism that the guideline recommends treating (AACE/ATA)."
    code = concept(
        (SNOMED, "40930008", "Hypothyroidism (disorder)"), (ICD10CM, "E03.9", "Hypothyroidism, unspecified")
    )
    return _suggest(f, "dx-hypothyroidism", "hypothyroidism", code, why, evidence, "thyroid-diagnosis")


RULES: tuple[Callable[[Facts], DiagnosisSuggestion | None], ...] = (
    obesity,
    diabetes,
    prediabetes,
    hypertension,
    ckd,
    anemia,
    hypercholesterolemia,
    hypertriglyceridemia,
    hypothyroidism,
)
VERSIONS: Mapping[str, str] = {
    "dx-obesity": "1.0.0",
    "dx-diabetes-t2": "1.0.0",
    "dx-prediabetes": "1.0.0",
    "dx-hypertension": "1.0.0",
    "dx-ckd": "1.0.0",
    "dx-anemia": "1.0.0",
    "dx-hypercholesterolemia": "1.0.0",
    "dx-hypertriglyceridemia": "1.0.0",
    "dx-hypothyroidism": "1.0.0",
}
"""Each rule's version: a change to a rule's criteria or thresholds bumps its own."""
RULE_IDS = tuple(VERSIONS)


def suggest_diagnoses(f: Facts, *, disabled: frozenset[str] = frozenset()) -> list[DiagnosisSuggestion]:
    """Every problem the record supports that the active problem list does not hold."""
    held = documented(f.problems)
    out = []
    for rule in RULES:
        found = rule(f)
        if found is None or found.rule.id in disabled or found.family in held:
            continue
        out.append(found)
    return out
