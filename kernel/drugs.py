"""Drugs named in free text: generic ingredient names and the classes they belong to. Pure.

Medication and allergy texts are resolved to generic ingredient names by exact dictionary
lookup (`drug-named-entity-recognition`, DrugBank and MeSH names; fuzzy matching is off: a
near-miss drug name must not become another drug), then to the drug classes below. Decision
support checks orders with them; the drafting guard checks that a drug a sentence names is in
the resources it cites.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

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


@functools.lru_cache(maxsize=8192)
def ingredients(text: str) -> frozenset[str]:
    """Generic names found in ``text`` (a medication or allergen as written), lower case."""
    tokens = TOKEN.findall(text)
    if not tokens:
        return frozenset()
    found = _finder()(tokens, is_ignore_case=True)
    return frozenset(str(match[0]["name"]).lower() for match in found if match[0].get("name"))


def names_of(text: str) -> frozenset[str]:
    """``text``'s ingredients and the classes they belong to."""
    found = ingredients(text)
    return found | {cls for cls, members in CLASSES.items() if found & members}
