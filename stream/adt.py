"""PID → Patient and PV1 → Encounter, the resources every patient-scoped message yields.

Pure functions. Mappings follow the HL7 v2-to-FHIR implementation guide (PID → Patient,
PV1 → Encounter) for the fields mapped so far; `docs/mapping.md` lists where we differ.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from kernel.events import deterministic_id, patient_key
from kernel.hl7v2.datatypes import concept_at, practitioner_ref
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import Message, Segment, component_of, components, patient_identifier

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V2_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"

_GENDER = {"M": "male", "F": "female", "O": "other", "A": "other", "U": "unknown", "N": "unknown"}
# PV1-2 patient class (HL7 table 0004) → v3 ActCode encounter class.
_CLASS = {
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "E": ("EMER", "emergency"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),
    "B": ("IMP", "inpatient encounter"),
}


def identifier_system(namespace: str, universal_id: str, universal_type: str) -> str | None:
    """FHIR Identifier.system for an HL7 HD (assigning authority)."""
    if universal_id and universal_type.upper() == "ISO":
        return f"urn:oid:{universal_id}"
    if universal_id and universal_type.upper() in ("URI", "URL"):
        return universal_id
    if namespace.startswith(("http://", "https://", "urn:")):
        return namespace
    return None


def map_patient(msg: Message) -> dict[str, Any]:
    """Patient from PID. The id is the patient key, so every message about one patient agrees."""
    authority, mrn = patient_identifier(msg)  # raises when there is no PID
    pid = msg.first("PID") or Segment("PID", "PID", msg.seps)
    seps = msg.seps
    identifiers: list[dict[str, Any]] = []
    # PID-3 (identifier list), then PID-2/PID-4 (external and alternate ids, v2.3-2.4),
    # PID-19 (SSN) and PID-20 (driver's licence), as the v2-to-FHIR guide maps them.
    for field, rep in _identifier_fields(pid):
        parts = components(rep, seps)  # CX: id, check digit, scheme, authority (HD), type
        value = parts[0]
        if not value or (field != 3 and any(i["value"] == value for i in identifiers)):
            continue
        ident: dict[str, Any] = {"value": value}
        if field == 19:
            ident["type"] = {"coding": [{"system": V2_0203, "code": "SS"}]}
            ident["system"] = "http://hl7.org/fhir/sid/us-ssn"
            identifiers.append(ident)
            continue
        if field == 20:
            ident["type"] = {"coding": [{"system": V2_0203, "code": "DL"}]}
            identifiers.append(ident)
            continue
        ns = _at(parts, 4)  # HD.1, the first subcomponent of CX.4
        if seps.subcomponent in rep:
            system = identifier_system(ns, component_of(rep, seps, 4, 2), component_of(rep, seps, 4, 3))
        else:
            system = identifier_system(ns, "", "")
        if system:
            ident["system"] = system
        if ns:
            ident["assigner"] = {"display": ns}
        id_type = _at(parts, 5)
        if id_type:
            ident["type"] = {"coding": [{"system": V2_0203, "code": id_type}]}
        identifiers.append(ident)

    resource: dict[str, Any] = {"resourceType": "Patient", "id": patient_key(authority, mrn)}
    if identifiers:
        resource["identifier"] = identifiers
    names = [_name(rep, msg) for rep in pid.repetitions(5) + pid.repetitions(9)]  # PID-9: alias
    names = [n for n in names if n]
    if names:
        resource["name"] = names
    gender = _GENDER.get(pid.value(8).upper())
    if gender:
        resource["gender"] = gender
    birth = pid.value(7)
    if birth:
        resource["birthDate"] = _date_only(birth, pid)
    addresses = [_address(rep, msg) for rep in pid.repetitions(11)]
    addresses = [a for a in addresses if a]
    if addresses:
        resource["address"] = addresses
    telecom = [_telecom(rep, msg) for rep in pid.repetitions(13)]
    telecom = [t for t in telecom if t]
    if telecom:
        resource["telecom"] = telecom
    died = (
        to_fhir_datetime(pid.value(29), ZoneInfo("UTC"), segment="PID", field=29) if pid.value(29) else None
    )
    if died:
        resource["deceasedDateTime"] = died
    elif pid.value(30).upper() == "Y":
        resource["deceasedBoolean"] = True
    marital = pid.value(16).upper()
    if marital:
        resource["maritalStatus"] = {
            "coding": [{"system": V3_MARITAL, "code": _MARITAL.get(marital, "UNK")}],
            "text": pid.value(16, 2) or marital,
        }
    extensions = _race_ethnicity(pid, msg)
    mother = component_of(pid.get(6).split(seps.repetition)[0], seps, 1, 1) if pid.get(6) else ""
    if mother:
        extensions.append({"url": MOTHERS_MAIDEN_NAME, "valueString": mother})
    if extensions:
        resource["extension"] = extensions
    concept = concept_at(pid, 15, msg)
    if concept:
        resource["communication"] = [{"language": concept}]
    contacts = [c for c in (_contact(nk1, msg) for nk1 in msg.all("NK1")) if c]
    if contacts:
        resource["contact"] = contacts
    practitioners = _general_practitioners(msg)
    if practitioners:
        resource["generalPractitioner"] = practitioners
    return resource


V3_MARITAL = "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus"
# PID-16 marital status (HL7 table 0002) → v3 MaritalStatus.
_MARITAL = {
    "A": "L",
    "D": "D",
    "M": "M",
    "S": "S",
    "W": "W",
    "C": "C",
    "P": "T",
    "R": "T",
    "E": "L",
    "N": "A",
    "I": "I",
}
MOTHERS_MAIDEN_NAME = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
US_CORE_RACE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
US_CORE_ETHNICITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
CDC_RACE_ETHNICITY = "urn:oid:2.16.840.1.113883.6.238"
_OMB_RACE = frozenset({"1002-5", "2028-9", "2054-5", "2076-8", "2106-3", "UNK", "ASKU"})
# PID-22 ethnic group: HL7 table 0189 letters or CDC codes → OMB ethnicity.
_ETHNICITY = {"H": "2135-2", "N": "2186-5", "2135-2": "2135-2", "2186-5": "2186-5"}


def _race_ethnicity(pid: Segment, msg: Message) -> list[dict[str, Any]]:
    """PID-10 race and PID-22 ethnic group as the US Core extensions (OMB category or detail)."""
    out: list[dict[str, Any]] = []
    for field, url, known in ((10, US_CORE_RACE, None), (22, US_CORE_ETHNICITY, _ETHNICITY)):
        parts: list[dict[str, Any]] = []
        texts: list[str] = []
        for rep in pid.repetitions(field):
            cwe = components(rep, msg.seps)
            code, display = cwe[0], _at(cwe, 2)
            texts.append(display or code)
            cdc = known.get(code.upper()) if known is not None else code
            if not cdc:
                continue
            coding: dict[str, Any] = {"system": CDC_RACE_ETHNICITY, "code": cdc}
            if display:
                coding["display"] = display
            omb = cdc in _OMB_RACE or cdc in ("2135-2", "2186-5")
            parts.append({"url": "ombCategory" if omb else "detailed", "valueCoding": coding})
        text = ", ".join(t for t in texts if t)
        if text:
            out.append({"url": url, "extension": [*parts, {"url": "text", "valueString": text}]})
    return out


def _contact(nk1: Segment, msg: Message) -> dict[str, Any] | None:
    """NK1 (next of kin / associated party) → Patient.contact."""
    contact: dict[str, Any] = {}
    relationship = concept_at(nk1, 3, msg)
    if relationship:
        contact["relationship"] = [relationship]
    names = [n for n in (_name(rep, msg) for rep in nk1.repetitions(2)) if n]
    if names:
        contact["name"] = names[0]
    telecom = [t for t in (_telecom(rep, msg) for rep in nk1.repetitions(5) + nk1.repetitions(6)) if t]
    if telecom:
        contact["telecom"] = telecom
    addresses = [a for a in (_address(rep, msg) for rep in nk1.repetitions(4)) if a]
    if addresses:
        contact["address"] = addresses[0]
    gender = _GENDER.get(nk1.value(15).upper())
    if gender:
        contact["gender"] = gender
    return contact or None


def _general_practitioners(msg: Message) -> list[dict[str, Any]]:
    """PD1-4 (primary care provider, XCN) and PD1-3 (primary facility, XON) by display."""
    pd1 = msg.first("PD1")
    if pd1 is None:
        return []
    out: list[dict[str, Any]] = [
        ref for ref in (practitioner_ref(rep, msg) for rep in pd1.repetitions(4)) if ref is not None
    ]
    for rep in pd1.repetitions(3):
        facility = component_of(rep, msg.seps, 1)
        if facility:
            out.append({"display": facility})
    return out


def _identifier_fields(pid: Segment) -> list[tuple[int, str]]:
    return [(field, rep) for field in (3, 2, 4, 19, 20) for rep in pid.repetitions(field)]


def _date_only(value: str, seg: Segment) -> str | None:
    # birthDate is a FHIR date: keep the date part (as written, in the value's own zone) at
    # its precision, drop any time.
    when = to_fhir_datetime(value, ZoneInfo("UTC"), segment=seg.name, field=7)
    return when[:10] if when else None


def _name(rep: str, msg: Message) -> dict[str, Any] | None:
    parts = components(rep, msg.seps)
    family = _at(parts, 1)  # XPN.1 is an FN: its first subcomponent is the surname
    given = [g for g in (_at(parts, 2), _at(parts, 3)) if g]
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    suffix = _at(parts, 4)
    if suffix:
        name["suffix"] = [suffix]
    prefix = _at(parts, 5)
    if prefix:
        name["prefix"] = [prefix]
    if _at(parts, 7).upper() == "L":
        name["use"] = "official"
    return name or None


def _at(parts: list[str], number: int) -> str:
    return parts[number - 1] if number <= len(parts) else ""


def _address(rep: str, msg: Message) -> dict[str, Any] | None:
    parts = components(rep, msg.seps)
    lines = [x for x in (_at(parts, 1), _at(parts, 2)) if x]  # XAD.1 is an SAD: street first
    addr: dict[str, Any] = {}
    if lines:
        addr["line"] = lines
    for key, comp in (("city", 3), ("state", 4), ("postalCode", 5), ("country", 6)):
        v = _at(parts, comp)
        if v:
            addr[key] = v
    return addr or None


def _telecom(rep: str, msg: Message) -> dict[str, Any] | None:
    parts = components(rep, msg.seps)
    email = _at(parts, 4)
    if email and "@" in email:
        return {"system": "email", "value": email}
    number = _at(parts, 1)
    if not number:
        area, local = _at(parts, 6), _at(parts, 7)
        number = f"({area}) {local}" if area and local else local
    if not number:
        return None
    use = {"PRN": "home", "WPN": "work", "ORN": "home", "VHN": "home"}.get(_at(parts, 2).upper())
    out: dict[str, Any] = {"system": "phone", "value": number}
    if use:
        out["use"] = use
    return out


def map_encounter(
    msg: Message, patient_id: str, tz: ZoneInfo, *, status: str, infer: bool = False
) -> dict[str, Any] | None:
    """Encounter from PV1, or None when the message has no PV1.

    With ``infer`` (messages that do not say where the visit stands: results, orders,
    documents, an A08 update), the status comes from the visit's dates and class when they
    are sent, and stays ``status`` otherwise.

    The id comes from the visit number (PV1-19) and its authority when present, else
    from the source message, so an A08 update of the same visit overwrites.
    """
    pv1 = msg.first("PV1")
    if pv1 is None:
        return None
    seps = msg.seps
    visit = pv1.value(19)
    authority = pv1.value(19, 4) or msg.msh.value(4)
    if visit:
        enc_id = deterministic_id("Encounter", authority, visit)
    else:
        enc_id = deterministic_id("Encounter", msg.sending_system, msg.control_id)
    patient_class = pv1.value(2).upper()
    code, display = _CLASS.get(patient_class, (patient_class or "AMB", ""))
    klass: dict[str, Any] = {
        "system": V3_ACT_CODE if patient_class in _CLASS or not patient_class else V2_0004,
        "code": code,
    }
    if display:
        klass["display"] = display
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": enc_id,
        "status": status,
        "class": klass,
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    if visit:
        resource["identifier"] = [{"value": visit, "type": {"coding": [{"system": V2_0203, "code": "VN"}]}}]
    start = to_fhir_datetime(pv1.value(44), tz, segment="PV1", field=44)
    end = to_fhir_datetime(pv1.value(45), tz, segment="PV1", field=45)
    evn = msg.first("EVN")
    # EVN-6 (event occurred) else EVN-2 (recorded): the admit time of an A01/A04, the
    # discharge time of an A03, when PV1 leaves them empty.
    event_time = to_fhir_datetime(evn.value(6) or evn.value(2), tz, segment="EVN", field=2) if evn else None
    if start is None and msg.trigger_event in ("A01", "A04"):
        start = event_time
    if end is None and msg.trigger_event == "A03":
        end = event_time
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    if period:
        resource["period"] = period
    if infer and (end or start):
        # Outside ADT the visit's dates say where it stands: discharged, admitted, or (PV1-2
        # P, pre-admit) still planned. Without dates nothing is assumed: unknown.
        if end:
            resource["status"] = "finished"
        else:
            resource["status"] = "planned" if patient_class == "P" else "in-progress"
    participants = _participants(pv1, msg)
    if participants:
        resource["participant"] = participants
    reason = concept_at(msg.first("PV2"), 3, msg)
    if reason:
        resource["reasonCode"] = [reason]  # PV2-3 admit reason
    loc_raw = pv1.repetitions(3)
    if loc_raw:
        parts = [component_of(loc_raw[0], seps, i) for i in (4, 1, 2, 3)]
        label = " ".join(p for p in parts if p)
        if label:
            resource["location"] = [{"location": {"display": label}}]
    return resource


# ADT trigger event → Encounter.status. None: the event is about the person, not a visit
# (A28/A31 add/update person): no Encounter is produced. A08 (update) reads PV1's dates.
ENCOUNTER_STATUS: dict[str, str | None] = {
    "A01": "in-progress",  # admit
    "A02": "in-progress",  # transfer
    "A03": "finished",  # discharge
    "A04": "in-progress",  # register an outpatient
    "A05": "planned",  # pre-admit
    "A06": "in-progress",  # outpatient → inpatient
    "A07": "in-progress",  # inpatient → outpatient
    "A08": "from-dates",  # update patient information
    "A11": "cancelled",  # cancel admit
    "A12": "in-progress",  # cancel transfer
    "A13": "in-progress",  # cancel discharge
    "A09": "in-progress",  # patient departing (tracking)
    "A10": "in-progress",  # patient arriving (tracking)
    "A14": "planned",  # pending admit
    "A15": "in-progress",  # pending transfer
    "A16": "in-progress",  # pending discharge
    "A25": "in-progress",  # cancel pending discharge
    "A26": "in-progress",  # cancel pending transfer
    "A27": "cancelled",  # cancel pending admit
    "A28": None,  # add person
    "A31": None,  # update person
    "A60": None,  # update allergy information
    "A30": None,  # merge person information
    "A34": None,  # merge patient information (patient id only)
    "A36": None,  # merge patient information (patient id and account)
    "A39": None,  # merge person (patient id)
    "A40": None,  # merge patient (identifier list)
    "A46": None,  # change patient id
    "A47": None,  # change patient identifier list
}
# Events whose MRG segment retires a patient identifier: the merges and identifier changes.
MERGE_EVENTS = frozenset({"A30", "A34", "A36", "A39", "A40", "A46", "A47"})
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
# AL1-2 allergen type (HL7 table 0127) → AllergyIntolerance (type, category).
_ALLERGEN = {
    "DA": ("allergy", "medication"),
    "FA": ("allergy", "food"),
    "EA": ("allergy", "environment"),
    "MA": ("allergy", None),
    "MC": ("allergy", None),
    "AA": ("allergy", "biologic"),
    "PA": ("allergy", "environment"),
    "LA": ("allergy", "environment"),
    "DI": ("intolerance", "medication"),
    "FI": ("intolerance", "food"),
}
# AL1-4 severity (table 0128) → criticality.
_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}
# DG1-6 diagnosis type (table 0052) → verification status.
_DIAGNOSIS_VERIFICATION = {"A": "provisional", "W": "provisional", "F": "confirmed"}


def encounter_status_for(msg: Message) -> str | None:
    """Encounter.status for this ADT event, or None when the event yields no Encounter."""
    status = ENCOUNTER_STATUS.get(msg.trigger_event)
    if status != "from-dates":
        return status
    return "unknown"  # map_encounter reads PV1-44/45 and PV1-2


def map_allergies(msg: Message, patient_id: str, tz: ZoneInfo) -> list[dict[str, Any]]:
    """AL1 → AllergyIntolerance, one per allergen (id from patient + allergen code)."""
    out = []
    for al1 in msg.all("AL1"):
        concept = concept_at(al1, 3, msg)
        if concept is None:
            continue
        key = al1.value(3, 1) or al1.value(3, 2)
        resource: dict[str, Any] = {
            "resourceType": "AllergyIntolerance",
            "id": deterministic_id("AllergyIntolerance", patient_id, key),
            "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
            "code": concept,
            "patient": {"reference": f"Patient/{patient_id}"},
        }
        kind, category = _ALLERGEN.get(al1.value(2).upper(), (None, None))
        if kind:
            resource["type"] = kind
        if category:
            resource["category"] = [category]
        criticality = _CRITICALITY.get(al1.value(4, 1).upper())
        if criticality:
            resource["criticality"] = criticality
        reactions = [r for r in (component_of(rep, msg.seps, 1) for rep in al1.repetitions(5)) if r]
        onset = to_fhir_datetime(al1.value(6), tz, segment="AL1", field=6)
        if reactions:
            reaction: dict[str, Any] = {"manifestation": [{"text": r} for r in reactions]}
            if onset:
                reaction["onset"] = onset
            resource["reaction"] = [reaction]
        elif onset:
            resource["onsetDateTime"] = onset
        out.append(resource)
    return out


def map_diagnoses(
    msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """DG1 → Condition (encounter diagnosis), id from patient + encounter + code."""
    out = []
    for dg1 in msg.all("DG1"):
        concept = concept_at(dg1, 3, msg)
        description = dg1.value(4)
        if concept is None and not description:
            continue
        if concept is None:
            concept = {"text": description}
        elif description and "text" not in concept:
            concept["text"] = description
        key = dg1.value(3, 1) or description
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": deterministic_id("Condition", patient_id, encounter_id, key),
            "clinicalStatus": {"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]},
            "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
            "code": concept,
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        verification = _DIAGNOSIS_VERIFICATION.get(dg1.value(6).upper())
        if verification:
            resource["verificationStatus"] = {
                "coding": [{"system": CONDITION_VERIFICATION, "code": verification}]
            }
        if encounter_id:
            resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
        onset = to_fhir_datetime(dg1.value(5), tz, segment="DG1", field=5)
        if onset:
            resource["onsetDateTime"] = onset
        out.append(resource)
    return out


def map_merge(msg: Message, surviving: dict[str, Any]) -> dict[str, Any] | None:
    """A40 (merge) / A47 (identifier change): the retired Patient that MRG-1 names.

    The retired Patient is marked inactive and ``replaced-by`` the surviving one; the caller
    adds the ``replaces`` link to the survivor. Because the patient key is derived from the
    identifier, the retired record lives under its own key: later events arrive under the
    survivor's key, and consumers of the old key learn of the merge from this record.
    """
    mrg = msg.first("MRG")
    if mrg is None:
        return None
    for rep in mrg.repetitions(1):
        value = component_of(rep, msg.seps, 1)
        if not value.strip():
            continue
        authority = (
            component_of(rep, msg.seps, 4, 1)
            or component_of(rep, msg.seps, 4, 2)
            or msg.msh.value(4)
            or msg.msh.value(3)
        )
        retired_id = patient_key(authority, value)
        if retired_id == surviving["id"]:
            return None
        identifier: dict[str, Any] = {"value": value, "use": "old"}
        ns = component_of(rep, msg.seps, 4, 1)
        if ns:
            identifier["assigner"] = {"display": ns}
        return {
            "resourceType": "Patient",
            "id": retired_id,
            "active": False,
            "identifier": [identifier],
            "link": [{"other": {"reference": f"Patient/{surviving['id']}"}, "type": "replaced-by"}],
        }
    return None


# IN1-17 insured's relationship to patient (HL7 table 0063) → subscriber-relationship.
_SUBSCRIBER = {"SEL": "self", "SPO": "spouse", "CHD": "child", "PAR": "parent", "DOM": "common"}
SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"


def map_procedures(
    msg: Message, patient_id: str, encounter_id: str | None, tz: ZoneInfo
) -> list[dict[str, Any]]:
    """PR1 → Procedure (completed), id from patient + encounter + code + time."""
    out = []
    for pr1 in msg.all("PR1"):
        concept = concept_at(pr1, 3, msg)
        description = pr1.value(4)
        if concept is None and not description:
            continue
        concept = concept or {"text": description}
        when = to_fhir_datetime(pr1.value(5), tz, segment="PR1", field=5)
        resource: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": deterministic_id(
                "Procedure", patient_id, encounter_id, pr1.value(3, 1) or description, when
            ),
            "status": "completed",
            "code": concept,
            "subject": {"reference": f"Patient/{patient_id}"},
        }
        if encounter_id:
            resource["encounter"] = {"reference": f"Encounter/{encounter_id}"}
        if when:
            resource["performedDateTime"] = when
        out.append(resource)
    return out


def map_coverages(msg: Message, patient_id: str, tz: ZoneInfo) -> list[dict[str, Any]]:
    """IN1 → Coverage: the payer by name (IN1-4), plan (IN1-2), policy (IN1-36), period."""
    out = []
    for in1 in msg.all("IN1"):
        payer = in1.value(4) or in1.value(3)
        if not payer:
            continue  # R4 Coverage needs a payor
        policy = in1.value(36)
        resource: dict[str, Any] = {
            "resourceType": "Coverage",
            "id": deterministic_id("Coverage", patient_id, in1.value(3), in1.value(2), policy),
            "status": "active",
            "beneficiary": {"reference": f"Patient/{patient_id}"},
            "payor": [{"display": payer}],
        }
        if policy:
            resource["identifier"] = [{"value": policy}]
        subscriber = in1.value(49)
        if subscriber:
            resource["subscriberId"] = subscriber
        plan = in1.value(2, 2) or in1.value(2)
        if plan:
            resource["class"] = [{"type": {"text": "plan"}, "value": in1.value(2) or plan, "name": plan}]
        start = to_fhir_datetime(in1.value(12), tz, segment="IN1", field=12)
        end = to_fhir_datetime(in1.value(13), tz, segment="IN1", field=13)
        period = {k: v for k, v in (("start", start), ("end", end)) if v}
        if period:
            resource["period"] = period
        relationship = _SUBSCRIBER.get(in1.value(17).upper())
        if relationship:
            resource["relationship"] = {"coding": [{"system": SUBSCRIBER_RELATIONSHIP, "code": relationship}]}
        out.append(resource)
    return out


def map_death_cause(msg: Message, patient_id: str) -> list[dict[str, Any]]:
    """PDA-1 (death cause code) → Condition, categorised as the cause of death."""
    pda = msg.first("PDA")
    concept = concept_at(pda, 1, msg)
    if pda is None or concept is None:
        return []
    return [
        {
            "resourceType": "Condition",
            "id": deterministic_id("Condition", patient_id, "cause-of-death", pda.repetitions(1)[0]),
            "category": [{"text": "cause of death"}],
            "code": concept,
            "subject": {"reference": f"Patient/{patient_id}"},
        }
    ]


V3_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
# PV1 doctor fields → Encounter.participant.type (v3 ParticipationType).
_DOCTORS = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
)


def _participants(pv1: Segment, msg: Message) -> list[dict[str, Any]]:
    """PV1-7/8/9/17 (attending, referring, consulting, admitting) by identifier + display."""
    out: list[dict[str, Any]] = []
    for field, code, display in _DOCTORS:
        for rep in pv1.repetitions(field):
            who = practitioner_ref(rep, msg)
            if who is None:
                continue
            out.append(
                {
                    "type": [{"coding": [{"system": V3_PARTICIPATION, "code": code, "display": display}]}],
                    "individual": who,
                }
            )
    return out
