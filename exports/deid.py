"""De-identification of FHIR R4 resources and free text (pure): the 18 identifier types of
45 CFR 164.514(b)(2) removed or pseudonymised, in one of two modes.

- ``shifted`` (the default): dates shifted per patient, keyed pseudonyms. This is not HIPAA
  Safe Harbor, which keeps no date element but the year and no linkable code derived from
  identifiers: shifted dates and keyed pseudonyms make it a limited data set /
  expert-determination style export, to be released under a data use agreement or an expert's
  determination.
- ``safe-harbor``: every date reduced to its year (free text too), a patient older than 89 gets
  no birth date at all (the year would show the age), and codes that are random per export,
  derived from nothing about the patient and linking nothing across exports.

Every dataset leaving clinstream for model builders passes through `Deidentifier`. It
removes or replaces the 18 identifier types:

- names (of the patient, relatives and staff), telecom (phone, fax, email), photos, contacts,
  addresses below the state, mother's maiden name, URLs and IP addresses: removed from the
  structure, and replaced by a tag (``[NAME]``, ``[PHONE]`` ...) in free text;
- identifiers of any kind (MRN, SSN, account, visit, licence, device serial ...): replaced by a
  stable keyed pseudonym, so one patient's records stay linked without the value;
- resource ids and references: pseudonyms too (our ids are hashes of source identifiers, so
  whoever knows an MRN could recompute them; a keyed HMAC cannot be recomputed);
- dates: every date and time is shifted by one offset per patient (1 to 365 days back), so
  intervals and order survive; a birth date keeps only its (shifted) year; a patient older
  than 89 at their last recorded event is aggregated to 90;
- free text (notes, comments, values as text, attachments) goes through a dictionary of the
  record's own identifiers (the names, numbers and places found in its structured data) and
  rules for what has a shape (emails, URLs, IPs, SSNs, phone numbers, labelled and long
  numbers, ZIP codes after a state, dates, ages over 89).

The key is a secret of the deployment (``CLINSTREAM_EXPORTS__DEID_KEY``): the same key gives
the same pseudonyms and offsets, so exports are reproducible and linkable across runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal

Mode = Literal["shifted", "safe-harbor"]
MODES: tuple[Mode, ...] = ("shifted", "safe-harbor")
METHOD = (
    "date-shifted pseudonymisation (limited data set / expert-determination style, NOT HIPAA Safe "
    "Harbor: dates keep day and month, pseudonyms link a patient's records): the 18 identifier types "
    "of 45 CFR 164.514(b)(2) removed or replaced by keyed pseudonyms, dates shifted by a per-patient "
    "offset of 1-365 days, birth dates to year, ages over 89 as 90, free text scrubbed by the "
    "record's own identifiers and pattern rules"
)
SAFE_HARBOR_METHOD = (
    "HIPAA Safe Harbor (45 CFR 164.514(b)(2)): the 18 identifier types removed; every date, in data "
    "and free text, reduced to its year; no birth year for patients over 89 and ages over 89 as 90+; "
    "record codes random per export (not derived from identifiers, not linkable across exports); free "
    "text scrubbed by the record's own identifiers and pattern rules"
)
METHODS: dict[Mode, str] = {"shifted": METHOD, "safe-harbor": SAFE_HARBOR_METHOD}
VERSION = "1.1"

Resource = dict[str, Any]

# Resource types that only describe people or payment: never exported.
DROPPED_TYPES = frozenset(
    {
        "RelatedPerson",
        "Person",
        "Practitioner",
        "PractitionerRole",
        "Coverage",
        "Account",
        "Claim",
        "ClaimResponse",
        "ExplanationOfBenefit",
        "Provenance",
        "AuditEvent",
    }
)
# Keys removed wherever they appear.
_REMOVED_KEYS = frozenset(
    {
        "telecom",
        "photo",
        "contact",
        "valueHumanName",
        "valueContactPoint",
        "serialNumber",
        "lotNumber",
        "udiCarrier",
        "distinctIdentifier",
        "deviceName",
        "fullUrl",
        "text",  # only when it is a Narrative: see _walk
    }
)
# String values that are codes or structure, never free text.
_CODE_KEYS = frozenset(
    {
        "resourceType",
        "system",
        "code",
        "version",
        "unit",
        "status",
        "use",
        "gender",
        "contentType",
        "language",
        "profile",
        "intent",
        "priority",
        "mode",
        "comparator",
        "docStatus",
        "criticality",
        "severity",
        "div",
        "sequence",
        "url",  # an extension's name (other URLs are removed before strings are read)
    }
)
_ADDRESS_KEPT = ("use", "type", "state", "country")
_MOTHERS_MAIDEN_NAME = "patient-mothersMaidenName"
_PEOPLE = ("Patient/", "Practitioner/", "PractitionerRole/", "RelatedPerson/", "Person/")

_DATE = re.compile(r"^(\d{4})-(\d{2})(?:-(\d{2}))?(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?$")
_HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
_REF = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$")

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_URL = re.compile(r"\b(?:https?|ftp)://\S+|\bwww\.[\w-]+(?:\.[\w-]+)+\S*", re.IGNORECASE)
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_IPV6 = re.compile(r"\b(?:[0-9a-fA-F]{1,4}:){3,7}[0-9a-fA-F]{1,4}\b")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_PHONE = re.compile(r"(?<![\w.])(?:\+?1[-.\s]?)?\(?\d{3}\)?[-.\s]\d{3}[-.\s]\d{4}\b")
_LABELLED = re.compile(
    r"\b(MRN|medical record(?: number| no\.?)?|acct|account(?: number| no\.?)?|a/c|SSN|social security"
    r"(?: number)?|member id|policy(?: number)?|serial(?: number| no\.?)?|device id|licen[cs]e(?: number)?"
    r"|certificate(?: number)?|plate|VIN|health plan(?: number)?|beneficiary(?: number)?)"
    r"(\s*(?:[:#]|number|no\.?)?\s*)((?=[A-Z-]*\d)[A-Z0-9][A-Z0-9-]{3,})",
    re.IGNORECASE,
)
# A capitalised name after a title or a relation ("Dr Smith", "mother Mary Jones"): names
# of people the structured record does not hold.
_CAPITALISED = r"[A-Z][a-z'\u2019]+(?:-[A-Z][a-z'\u2019]+)*"
_TITLED = re.compile(
    r"\b((?i:mr|mrs|ms|miss|mx|dr|prof|mother|father|wife|husband|son|daughter|sister|brother|spouse"
    r"|partner|guardian|friend|aunt|uncle|grandmother|grandfather|niece|nephew|neighbou?r|caregiver))"
    rf"(\.?,?\s+)({_CAPITALISED}(?:\s+{_CAPITALISED}){{0,2}})\b"
)
_LONG_NUMBER = re.compile(r"(?<![\d.,])\d{7,}(?![\d.,]\d)")
_STATE_ZIP = re.compile(r"\b([A-Z]{2})\s+\d{5}(?:-\d{4})?\b")
_ISO_DATE = re.compile(
    r"\b(\d{4})-(\d{2})-(\d{2})(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b"
)
_US_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4}|\d{2})\b")
_MONTHS = "january february march april may june july august september october november december".split()
_MONTH = r"(Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"  # noqa: E501
_TEXT_DATE_MDY = re.compile(rf"\b{_MONTH}\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})\b", re.IGNORECASE)
_TEXT_DATE_DMY = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH}\.?,?\s+(\d{{4}})\b", re.IGNORECASE)
_TEXT_MONTH_YEAR = re.compile(rf"\b{_MONTH}\.?\s+(\d{{4}})\b", re.IGNORECASE)
_OLD_AGE = re.compile(r"\b(?:9\d|1[0-4]\d)(?=\s*-?\s*(?:years?|yrs?|y/?o\b|year-old))", re.IGNORECASE)


def _month(name: str) -> int:
    key = name.lower().rstrip(".")[:3]
    return next(i for i, m in enumerate(_MONTHS, 1) if m.startswith(key))


@dataclass
class Identifiers:
    """The identifiers a patient's own record holds: the dictionary free text is scrubbed with."""

    names: set[str] = field(default_factory=set)
    numbers: set[str] = field(default_factory=set)
    places: set[str] = field(default_factory=set)
    contacts: set[str] = field(default_factory=set)
    birth_dates: set[str] = field(default_factory=set)
    latest: date | None = None
    birth: date | None = None

    def add_resource(self, resource: Mapping[str, Any]) -> None:
        """Collect what ``resource`` holds (recursively)."""
        _collect(resource, self, "")

    def patterns(self) -> list[tuple[re.Pattern[str], str]]:
        """Regexes for every collected value, longest first, with the tag that replaces it."""
        found: list[tuple[str, str]] = []
        for tag, values in (
            ("[NAME]", self.names),
            ("[ID]", self.numbers),
            ("[ADDRESS]", self.places),
            ("[CONTACT]", self.contacts),
            ("[DATE]", self.birth_dates),
        ):
            found += [(v, tag) for v in values if len(v.strip()) >= 2]
        found.sort(key=lambda f: (-len(f[0]), f[0]))
        out = []
        for value, tag in found:
            body = re.escape(value.strip()).replace(r"\ ", r"\s+")
            pattern = re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE)
            out.append((pattern, tag))
        return out


def _collect(node: Any, into: Identifiers, key: str) -> None:
    if isinstance(node, list):
        for item in node:
            _collect(item, into, key)
        return
    if not isinstance(node, Mapping):
        return
    if key in ("name", "valueHumanName") and ("family" in node or "given" in node or "text" in node):
        for part in [node.get("family"), node.get("text"), *(node.get("given") or [])]:
            if isinstance(part, str):
                into.names.add(part)
                into.names.update(w for w in part.split() if len(w) >= 3)
    if key in ("identifier",) and isinstance(node.get("value"), str):
        into.numbers.add(node["value"])
    if key in ("telecom", "valueContactPoint") and isinstance(node.get("value"), str):
        value = node["value"]
        into.contacts.add(value)
        digits = re.sub(r"\D", "", value)
        if len(digits) >= 7:
            into.contacts.add(digits)
    if key in ("address", "valueAddress"):
        for part in [
            node.get("city"),
            node.get("district"),
            node.get("postalCode"),
            node.get("text"),
            *(node.get("line") or []),
        ]:
            if isinstance(part, str):
                into.places.add(part)
    ref = node.get("reference")
    if isinstance(node.get("display"), str) and isinstance(ref, str) and ref.startswith(_PEOPLE):
        into.names.add(node["display"])  # a reference to a person: its display is their name
    url, maiden = node.get("url"), node.get("valueString")
    if isinstance(url, str) and url.endswith(_MOTHERS_MAIDEN_NAME) and isinstance(maiden, str):
        into.names.add(maiden)
    if node.get("resourceType") == "Patient" and isinstance(node.get("birthDate"), str):
        _birth(node["birthDate"], into)
    for k, v in node.items():
        if isinstance(v, str) and _DATE.match(v) and k != "birthDate":
            day = _as_date(v)
            if day is not None and (into.latest is None or day > into.latest):
                into.latest = day
        elif isinstance(v, (list, dict)):
            _collect(v, into, k)


def _birth(value: str, into: Identifiers) -> None:
    day = _as_date(value)
    if day is None:
        return
    into.birth = day
    into.birth_dates.update(
        {
            day.isoformat(),
            day.strftime("%Y%m%d"),
            day.strftime("%m/%d/%Y"),
            f"{day.month}/{day.day}/{day.year}",
            day.strftime("%B %d, %Y"),
            f"{day.strftime('%B')} {day.day}, {day.year}",
            f"{day.day} {day.strftime('%B')} {day.year}",
        }
    )


def _as_date(value: str) -> date | None:
    m = _DATE.match(value)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3] or 15))
    except ValueError:
        return None


class Deidentifier:
    """Pseudonyms and date offsets under one secret key (``shifted``), or random codes and
    years (``safe-harbor``, no key); de-identifies one patient at a time."""

    def __init__(self, key: bytes | None, mode: Mode = "shifted") -> None:
        if mode == "shifted" and (key is None or len(key) < 16):
            raise ValueError("the de-identification key needs at least 16 bytes")
        self.mode: Mode = mode
        self._key = key or b""
        self._codes: dict[str, str] = {}

    @property
    def method(self) -> str:
        """What this mode does, as the dataset card says it."""
        return METHODS[self.mode]

    def pseudonym(self, kind: str, value: str) -> str:
        """A 24-hex code for ``value`` (per kind): keyed and stable (``shifted``), or drawn at
        random the first time this export meets the value (``safe-harbor``)."""
        if self.mode == "safe-harbor":
            return self._codes.setdefault(f"{kind}\x1f{value}", secrets.token_hex(12))
        return hmac.new(self._key, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()[:24]

    def offset_days(self, patient_id: str) -> int:
        """How many days this patient's dates move back (1 to 365; none in ``safe-harbor``)."""
        if self.mode == "safe-harbor":
            return 0
        digest = hmac.new(self._key, f"offset\x1f{patient_id}".encode(), hashlib.sha256).digest()
        return 1 + int.from_bytes(digest[:4], "big") % 365

    def patient(self, patient_id: str, resources: Iterable[Mapping[str, Any]]) -> PatientScrubber:
        """A scrubber for one patient, its dictionary built from ``resources`` (all of them)."""
        found = Identifiers()
        for resource in resources:
            found.add_resource(resource)
        return PatientScrubber(self, patient_id, found)


class PatientScrubber:
    """De-identifies the resources and free text of one patient."""

    def __init__(self, deid: Deidentifier, patient_id: str, found: Identifiers) -> None:
        self._deid = deid
        self.patient_id = patient_id
        self.pseudonym = deid.pseudonym("Patient", patient_id)
        self._shift = timedelta(days=-deid.offset_days(patient_id))
        self._year_only = deid.mode == "safe-harbor"
        self._found = found
        self._patterns = found.patterns()
        self._over_89 = (
            found.birth is not None
            and found.latest is not None
            and (found.latest - found.birth).days / 365.25 >= 90
        )

    # -- values ---------------------------------------------------------------------------

    def shift_date(self, value: str) -> str:
        """A FHIR date/dateTime/instant moved by the patient's offset, same precision."""
        m = _DATE.match(value)
        if m is None:
            return value
        if self._year_only:
            return str(m[1])
        year, month, day, time = int(m[1]), int(m[2]), m[3], m[4]
        try:
            moved = date(year, month, int(day or 15)) + self._shift
        except ValueError:
            return str(year)
        if day is None:
            return f"{moved.year:04d}-{moved.month:02d}"
        return moved.isoformat() + (time or "")

    def shift_datetime(self, value: datetime) -> datetime:
        """A datetime moved by the patient's offset."""
        return value + self._shift

    def when(self, value: datetime) -> str:
        """A datetime as an export shows it: shifted, to the minute; or its year alone."""
        if self._year_only:
            return str(value.year)
        return self.shift_datetime(value).isoformat(timespec="minutes")

    def reference(self, value: str) -> str:
        """``Type/id`` with the id replaced by its pseudonym; other references dropped to ''."""
        m = _REF.match(value)
        if m is None:
            return ""
        kind, ident = m[1], m[2]
        return f"{kind}/{self.ref_id(kind, ident)}"

    def ref_id(self, kind: str, ident: str) -> str:
        """The pseudonym of a resource id, the same whatever the type (so ids quoted in text
        match), the patient's own id giving the patient pseudonym."""
        if ident == self.patient_id:
            return self.pseudonym
        return self._deid.pseudonym("id", ident)

    def text(self, value: str) -> str:
        """Free text with identifiers replaced by tags and dates shifted."""
        out = _HEX_ID.sub(lambda m: self.ref_id("", m[0]), value)
        out = _EMAIL.sub("[EMAIL]", out)
        out = _URL.sub("[URL]", out)
        out = _IPV6.sub("[IP]", out)
        out = _IPV4.sub("[IP]", out)
        out = _SSN.sub("[SSN]", out)
        for pattern, tag in self._patterns:
            out = pattern.sub(tag, out)
        out = _TITLED.sub(lambda m: f"{m[1]}{m[2]}[NAME]", out)
        out = _LABELLED.sub(lambda m: f"{m[1]}{m[2]}[ID]", out)
        out = _PHONE.sub("[PHONE]", out)
        out = _STATE_ZIP.sub(lambda m: f"{m[1]} [ZIP]", out)
        out = _ISO_DATE.sub(self._iso_in_text, out)
        out = _US_DATE.sub(self._us_in_text, out)
        out = _TEXT_DATE_MDY.sub(lambda m: self._words(_month(m[1]), int(m[2]), int(m[3])), out)
        out = _TEXT_DATE_DMY.sub(lambda m: self._words(_month(m[2]), int(m[1]), int(m[3])), out)
        out = _TEXT_MONTH_YEAR.sub(lambda m: self._words(_month(m[1]), 15, int(m[2]), show_day=False), out)
        out = _OLD_AGE.sub("90+", out)
        return _LONG_NUMBER.sub("[ID]", out)

    def _iso_in_text(self, m: re.Match[str]) -> str:
        if self._year_only:
            return str(m[1])
        try:
            moved = date(int(m[1]), int(m[2]), int(m[3])) + self._shift
        except ValueError:
            return "[DATE]"
        return moved.isoformat() + (m[4] or "")

    def _us_in_text(self, m: re.Match[str]) -> str:
        year = int(m[3]) if len(m[3]) == 4 else 2000 + int(m[3])
        if self._year_only:
            return str(year)
        try:
            moved = date(year, int(m[1]), int(m[2])) + self._shift
        except ValueError:
            return "[DATE]"
        return f"{moved.month}/{moved.day}/{moved.year}"

    def _words(self, month: int, day: int, year: int, *, show_day: bool = True) -> str:
        if self._year_only:
            return str(year)
        try:
            moved = date(year, month, day) + self._shift
        except ValueError:
            return "[DATE]"
        name = _MONTHS[moved.month - 1].capitalize()
        return f"{name} {moved.day}, {moved.year}" if show_day else f"{name} {moved.year}"

    # -- resources ------------------------------------------------------------------------

    def resource(self, resource: Mapping[str, Any]) -> Resource | None:
        """A de-identified copy of ``resource``; None for types that are never exported."""
        kind = str(resource.get("resourceType", ""))
        if kind in DROPPED_TYPES:
            return None
        out = self._walk(resource, "", kind)
        assert isinstance(out, dict)  # noqa: S101 - a mapping in gives a mapping out
        if "id" in resource:
            out["id"] = self.ref_id(kind, str(resource["id"]))
        out.pop("meta", None)
        if kind == "Patient":
            self._patient(out, resource)
        return out

    def _patient(self, out: Resource, original: Mapping[str, Any]) -> None:
        birth = original.get("birthDate")
        if isinstance(birth, str) and _DATE.match(birth):
            if self._over_89 and self._year_only:
                out.pop("birthDate", None)  # any birth year would show an age over 89
            elif self._over_89 and self._found.latest is not None:
                out["birthDate"] = str((self._found.latest + self._shift).year - 90)
            else:
                out["birthDate"] = self.shift_date(birth)[:4]
        out.pop("name", None)
        out.pop("link", None)

    def _walk(self, node: Any, key: str, kind: str) -> Any:
        if isinstance(node, list):
            items = [self._walk(item, key, kind) for item in node]
            return [i for i in items if i not in (None, {}, "")]
        if isinstance(node, Mapping):
            return self._mapping(node, key, kind)
        if isinstance(node, str):
            return self._string(node, key)
        return node

    def _mapping(self, node: Mapping[str, Any], key: str, kind: str) -> dict[str, Any] | None:
        if key in ("address", "valueAddress"):
            return {k: node[k] for k in _ADDRESS_KEPT if k in node} or None
        url = node.get("url")
        if isinstance(url, str) and url.endswith(_MOTHERS_MAIDEN_NAME):
            return None
        if key in ("name",) and ("family" in node or "given" in node):
            return None
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k in _REMOVED_KEYS and (k != "text" or (isinstance(v, Mapping) and "div" in v)):
                continue
            if k == "display" and "reference" in node:
                continue
            if k == "reference" and isinstance(v, str):
                ref = self.reference(v)
                if ref:
                    out[k] = ref
                continue
            if k == "value" and key == "identifier" and isinstance(v, str):
                out[k] = self._deid.pseudonym("identifier", f"{node.get('system', '')}|{v}")
                continue
            if k == "assigner":
                continue
            if k == "url" and not ("value" in "".join(node.keys()) or "extension" in node):
                continue  # an attachment's or endpoint's URL, not an extension's name
            if k == "data" and key == "attachment" and isinstance(v, str):
                scrubbed = self._attachment_data(v, str(node.get("contentType", "")))
                if scrubbed is not None:
                    out[k] = scrubbed
                continue
            walked = self._walk(v, k, kind)
            if walked not in (None, {}, [], ""):
                out[k] = walked
        return out

    def _string(self, value: str, key: str) -> str:
        if key in _CODE_KEYS or key == "id":
            return value
        if _DATE.match(value):
            return self.shift_date(value)
        return self.text(value)

    def _attachment_data(self, data: str, content_type: str) -> str | None:
        """Text attachments scrubbed and re-encoded; anything else (PDF, images) dropped."""
        if not content_type.startswith("text/"):
            return None
        try:
            text = base64.b64decode(data, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return base64.b64encode(self.text(text).encode()).decode()
