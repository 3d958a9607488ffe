"""Drugs named in free text: generic ingredient names and the classes they belong to. Pure.

Medication and allergy texts are resolved to generic ingredient names by exact dictionary
lookup (`drug-named-entity-recognition`, DrugBank and MeSH names; fuzzy matching is off: a
near-miss drug name must not become another drug), then to the drug classes below. Decision
support checks orders with them; the drafting guard checks that a drug a sentence names is in
the resources it cites.

A medication is written many ways: a brand or an abbreviation in the text, the generic in an
RxNorm coding's display, a local code with a pharmacy's own label, or only the display of a
Medication reference. `drug_writing` picks the first of them that names an ingredient, the
RxNorm displays first (the normalizers write RxNorm's system as its URI, however it was sent),
so that the tables find the same ingredients however the order was written. An RxNorm code
without any text is not resolved: the RxNorm tables are not on PyPI and the RxNav service is a
download at run time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from kernel.chart import RXNORM
from kernel.events import Severity

TOKEN = re.compile(r"[A-Za-z][A-Za-z'\-]*")
"""A word of a drug name (letters, apostrophes and hyphens)."""


# Drug classes the interaction table names, with their members (WHO ATC groups).
CLASSES: Mapping[str, frozenset[str]] = {
    name: frozenset(members.split(","))
    for name, members in {
        "nsaid": "ibuprofen,naproxen,diclofenac,ketorolac,meloxicam,celecoxib,indomethacin,etodolac,"
        "nabumetone,piroxicam,ketoprofen,aspirin",
        "ssri": "fluoxetine,sertraline,paroxetine,citalopram,escitalopram,fluvoxamine",
        "snri": "venlafaxine,duloxetine,desvenlafaxine,milnacipran",
        "maoi": "phenelzine,tranylcypromine,isocarboxazid,selegiline,rasagiline,linezolid",
        "statin": "simvastatin,atorvastatin,lovastatin,rosuvastatin,pravastatin,fluvastatin,pitavastatin",
        "opioid": "morphine,oxycodone,hydrocodone,hydromorphone,fentanyl,codeine,tramadol,methadone,"
        "meperidine,tapentadol,buprenorphine",
        "beta blocker": "metoprolol,atenolol,propranolol,carvedilol,bisoprolol,nadolol,labetalol,nebivolol",
        "ace inhibitor": "lisinopril,enalapril,ramipril,captopril,benazepril,quinapril,perindopril,"
        "fosinopril",
        "angiotensin receptor blocker": "losartan,valsartan,irbesartan,candesartan,olmesartan,telmisartan,"
        "azilsartan,eprosartan",
        "fluoroquinolone": "ciprofloxacin,levofloxacin,moxifloxacin,ofloxacin",
        "sulfonylurea": "glipizide,glyburide,glimepiride,gliclazide",
        "potassium-sparing diuretic": "spironolactone,eplerenone,amiloride,triamterene",
        "loop diuretic": "furosemide,bumetanide,torsemide",
        "thiazide": "hydrochlorothiazide,chlorthalidone,indapamide,metolazone",
        "anticoagulant": "warfarin,apixaban,rivaroxaban,dabigatran,edoxaban,heparin,enoxaparin",
        "proton pump inhibitor": "omeprazole,esomeprazole,pantoprazole,lansoprazole,rabeprazole",
        "corticosteroid": "prednisone,prednisolone,methylprednisolone,dexamethasone,hydrocortisone",
        "benzodiazepine": "diazepam,lorazepam,alprazolam,clonazepam,midazolam,triazolam,temazepam",
        "calcium channel blocker": "amlodipine,diltiazem,verapamil,nifedipine,felodipine",
        "triptans": "sumatriptan,rizatriptan,zolmitriptan,eletriptan,naratriptan",
        "sglt2 inhibitor": "empagliflozin,dapagliflozin,canagliflozin,ertugliflozin",
        "nitrate": "nitroglycerin,isosorbide mononitrate,isosorbide dinitrate,isosorbide",
    }.items()
}


@functools.cache
def _finder() -> Callable[..., list[Any]]:
    from drug_named_entity_recognition import find_drugs  # loads its dictionary (seconds) once

    finder: Callable[..., list[Any]] = find_drugs
    return finder


# Salt and ester words after a base name ("lithium carbonate", "naproxen sodium", "metoprolol
# succinate"): the base is the active moiety that interaction tables and classes name.
SALTS = frozenset(
    "acetate besylate bitartrate bromide calcium carbonate chloride citrate fumarate hcl hyclate "
    "hydrobromide hydrochloride magnesium maleate mesylate monohydrate phosphate potassium sodium "
    "succinate sulfate tartrate trihydrate".split()
)


def _base(name: str) -> str:
    words = name.split()
    while len(words) > 1 and words[-1] in SALTS:
        words.pop()
    return " ".join(words)


@functools.lru_cache(maxsize=8192)
def ingredients(text: str) -> frozenset[str]:
    """Generic names found in ``text`` (a medication or allergen as written), lower case; a salt
    ("lithium carbonate") also gives its base ("lithium")."""
    tokens = TOKEN.findall(text)
    if not tokens:
        return frozenset()
    found = _finder()(tokens, is_ignore_case=True)
    names = {str(match[0]["name"]).lower() for match in found if match[0].get("name")}
    return frozenset(names | {_base(n) for n in names})


def names_of(text: str) -> frozenset[str]:
    """``text``'s ingredients and the classes they belong to."""
    found = ingredients(text)
    return found | {cls for cls, members in CLASSES.items() if found & members}


_SEVERITY: Mapping[str, Severity] = {"danger": "critical", "warning": "warning", "caution": "info"}


# Allergy classes: a drug in the class conflicts with an allergy to the class or any member;
# ``cross`` classes conflict at lower severity (penicillin allergy and cephalosporins).
ALLERGY_CLASSES: Mapping[str, frozenset[str]] = {
    name: frozenset(members.split(","))
    for name, members in {
        "penicillins": "penicillin,penicillin g,penicillin v,amoxicillin,ampicillin,piperacillin,nafcillin,"
        "oxacillin,dicloxacillin,flucloxacillin,penicillins",
        "cephalosporins": "cefazolin,cephalexin,cefuroxime,ceftriaxone,cefotaxime,ceftazidime,cefepime,"
        "cefdinir,cefpodoxime,cefaclor,cephalosporins",
        "sulfonamide antibiotics": "sulfamethoxazole,sulfadiazine,sulfasalazine,sulfonamides",
        "nsaids": "ibuprofen,naproxen,diclofenac,ketorolac,meloxicam,indomethacin,aspirin,celecoxib",
        "opioids": "morphine,codeine,oxycodone,hydrocodone,hydromorphone,fentanyl,tramadol,meperidine",
        "ace inhibitors": ",".join(sorted(CLASSES["ace inhibitor"])),
        "angiotensin receptor blockers": "losartan,valsartan,irbesartan,candesartan,olmesartan,telmisartan,"
        "azilsartan,eprosartan",
        "statins": ",".join(sorted(CLASSES["statin"])),
    }.items()
}
_CLASS_WORDS = {
    "penicillin": "penicillins",
    "penicillins": "penicillins",
    "cephalosporin": "cephalosporins",
    "cephalosporins": "cephalosporins",
    "sulfa": "sulfonamide antibiotics",
    "sulfonamide": "sulfonamide antibiotics",
    "sulfonamides": "sulfonamide antibiotics",
    "nsaid": "nsaids",
    "nsaids": "nsaids",
    "opioid": "opioids",
    "opioids": "opioids",
    "opiate": "opioids",
    "opiates": "opioids",
    "statin": "statins",
    "statins": "statins",
}
CROSS_REACTIVE = {("penicillins", "cephalosporins")}


@dataclass(frozen=True, slots=True)
class Interaction:
    """One pair of the interaction table: either side's names, severity, what and why."""

    side_a: frozenset[str]
    side_b: frozenset[str]
    severity: Severity
    description: str
    recommendation: str
    source: str


@functools.cache
def interactions() -> tuple[Interaction, ...]:
    """The curated pairs (loaded once)."""
    from drug_interaction_mcp.interactions import INTERACTIONS

    return tuple(
        Interaction(
            frozenset(i.drug_a),
            frozenset(i.drug_b),
            _SEVERITY[i.severity.value],
            i.description,
            i.recommendation,
            i.source,
        )
        for i in INTERACTIONS
    )


# Class names of more than one word, as allergy lists write them.
_CLASS_PHRASES = {
    "ace inhibitor": "ace inhibitors",
    "ace-inhibitor": "ace inhibitors",
    "angiotensin converting enzyme": "ace inhibitors",
    "angiotensin-converting enzyme": "ace inhibitors",
    "angiotensin receptor blocker": "angiotensin receptor blockers",
    "angiotensin ii receptor": "angiotensin receptor blockers",
    "arb": "angiotensin receptor blockers",
    "hmg-coa reductase": "statins",
}


def allergy_classes(text: str) -> frozenset[str]:
    """The drug classes an allergy text names, by a class word or phrase, or a member drug."""
    words = {w.lower() for w in TOKEN.findall(text)}
    found = ingredients(text)
    lowered = " ".join(text.lower().split())
    named = {_CLASS_WORDS[w] for w in words if w in _CLASS_WORDS}
    named |= {
        cls for phrase, cls in _CLASS_PHRASES.items() if re.search(rf"\b{re.escape(phrase)}s?\b", lowered)
    }
    return frozenset(named | {cls for cls, members in ALLERGY_CLASSES.items() if found & members})


class AllergyConflict(NamedTuple):
    """How a drug conflicts with a recorded allergy, and the drug or class that makes it."""

    kind: Literal["same", "class", "cross"]
    name: str


def allergy_conflict(drug_text: str, allergy_text: str) -> AllergyConflict | None:
    """How a drug conflicts with a recorded allergy: the same drug, a drug of the allergen's class,
    a cross-reactive class (penicillin allergy, cephalosporin), or not at all."""
    drug = ingredients(drug_text)
    if not drug:
        return None
    same = drug & ingredients(allergy_text)
    if same:
        return AllergyConflict("same", sorted(same)[0])
    classes = allergy_classes(allergy_text)
    in_class = sorted(c for c in classes if drug & ALLERGY_CLASSES[c])
    if in_class:
        return AllergyConflict("class", in_class[0])
    cross = sorted(c for a, c in CROSS_REACTIVE if a in classes and drug & ALLERGY_CLASSES[c])
    if cross:
        return AllergyConflict("cross", cross[0])
    return None


# Classes that share another class's listed interactions: the curated table names ACE inhibitors
# only, while the ARB labels (losartan, valsartan) carry the same warnings (potassium and
# potassium-sparing diuretics, NSAIDs, trimethoprim, lithium: hyperkalaemia, renal function).
SHARES_INTERACTIONS: Mapping[str, str] = {"angiotensin receptor blocker": "ace inhibitor"}


def _interacting_names(text: str) -> frozenset[str]:
    names = names_of(text)
    return names | {SHARES_INTERACTIONS[n] for n in names if n in SHARES_INTERACTIONS}


def interaction_between(text_a: str, text_b: str) -> Interaction | None:
    """The first listed interaction between two drugs as written (table order: most specific)."""
    names_a, names_b = _interacting_names(text_a), _interacting_names(text_b)
    if not names_a or not names_b or ingredients(text_a) == ingredients(text_b):
        return None
    for rule in interactions():
        if (names_a & rule.side_a and names_b & rule.side_b) or (
            names_a & rule.side_b and names_b & rule.side_a
        ):
            return rule
    return None


def drug_writing(concept: Mapping[str, Any] | None, *more: str) -> str:
    """The writing of one medication the drug tables read: the first that names an ingredient
    of its RxNorm codings' displays, its text, its other displays and ``more`` (e.g. a
    Medication reference's display), in that order (one writing, so the same drug gives the
    same ingredients however the order was written); the concept's text (or first display)
    when none does. Interaction, allergy and renal rules read it."""
    concept = concept or {}
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    rx = [str(c.get("display") or "") for c in codings if c.get("system") == RXNORM]
    other = [str(c.get("display") or "") for c in codings if c.get("system") != RXNORM]
    for text in (*rx, str(concept.get("text") or ""), *other, *more):
        text = " ".join(text.split())
        if text and ingredients(text):
            return text
    return str(concept.get("text") or next((d for d in (*rx, *other, *more) if d), ""))
