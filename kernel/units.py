"""UCUM units: the code a quantity's unit is written as, checked with the UCUM grammar
(ucumvert), and conversion between UCUM units (ucumvert → pint).

Pure functions with bounded memos. Senders write units loosely (``mg/hr``, ``beats/min``,
``10^3/uL``): a unit becomes a UCUM code only when it parses as UCUM as written, or after
rewriting the spellings below, which are unambiguous; otherwise the quantity keeps the
sender's text in ``unit`` and no UCUM ``system``/``code`` is claimed. Values are never
converted in the normalized record (every number stays traceable to the source); rules
convert when they compare (`convert`).
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any

UCUM = "http://unitsofmeasure.org"
# Whole-unit spellings seen in feeds → UCUM (matched case-insensitively).
_WHOLE = {
    "bpm": "/min",
    "beats/min": "/min",
    "beats per minute": "/min",
    "breaths/min": "/min",
    "/min": "/min",
    "mmhg": "mm[Hg]",
    "mm hg": "mm[Hg]",
    "degf": "[degF]",
    "deg f": "[degF]",
    "°f": "[degF]",
    "degc": "Cel",
    "deg c": "Cel",
    "°c": "Cel",
    "c": "Cel",
    "f": "[degF]",
    "in": "[in_i]",
    "inch": "[in_i]",
    "inches": "[in_i]",
    "lb": "[lb_av]",
    "lbs": "[lb_av]",
    "iu": "[IU]",
    "iu/l": "[IU]/L",
    "iu/ml": "[IU]/mL",
    "k/ul": "10*3/uL",
    "k/mcl": "10*3/uL",
    "m/ul": "10*6/uL",
    "thou/ul": "10*3/uL",
    "mill/ul": "10*6/uL",
}
# Powers of ten written as 10^3, x10E3, 10e3 → UCUM 10*3.
_POWER = re.compile(r"^(?:x\s*)?10\s*(?:\^|e|E|\*\*)\s*(\d+)")
# Unit atoms written loosely inside a compound unit (``mg/hr``) → UCUM atoms.
_ATOMS = {"hr": "h", "hrs": "h", "hour": "h", "sec": "s", "mcg": "ug", "cc": "mL", "mcl": "uL", "l": "L"}
_ATOM = re.compile(r"[A-Za-z]+")


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    from ucumvert import get_ucum_parser  # the grammar loads in ~0.6 s: only when first needed

    return get_ucum_parser()


@functools.lru_cache(maxsize=2048)
def _valid(code: str) -> bool:
    if not code or any(c.isspace() for c in code):
        return False
    try:
        _parser().parse(code)
    except Exception:  # lark raises several error types for text that is not UCUM
        return False
    return True


@functools.lru_cache(maxsize=2048)
def ucum_code(unit: str) -> str | None:
    """The UCUM code for a unit as a sender wrote it, or None when it is not (safely) UCUM."""
    text = unit.strip()
    lowered = text.lower()
    # Checked first: some feed spellings parse as other UCUM units (K/uL is kelvin per
    # microlitre, C is coulomb, F farad) but mean thousands, Celsius, Fahrenheit.
    if lowered in _WHOLE:
        return _WHOLE[lowered]
    if _valid(text):
        return text
    power = _POWER.match(text)
    if power:
        candidate = f"10*{power[1]}{text[power.end() :].strip()}"
        candidate = _ATOM.sub(lambda m: _ATOMS.get(m[0], m[0]), candidate)
        return candidate if _valid(candidate) else None
    candidate = _ATOM.sub(lambda m: _ATOMS.get(m[0], m[0]), text)
    return candidate if candidate != text and _valid(candidate) else None


def quantity_unit(code: str, text: str = "") -> dict[str, Any]:
    """``unit`` (the sender's text, else the code) plus UCUM ``system``/``code`` when valid."""
    out: dict[str, Any] = {}
    shown = text or code
    if shown:
        out["unit"] = shown
    ucum = ucum_code(code) if code else None
    if ucum is None and text and not code:
        ucum = ucum_code(text)
    if ucum is not None:
        out["system"] = UCUM
        out["code"] = ucum
    return out


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry  # builds pint's registry (~1 s): only when first needed

    return PintUcumRegistry()


@functools.lru_cache(maxsize=1024)
def _factor(source: str, target: str) -> tuple[Decimal, Decimal] | None:
    """(scale, offset) with target = value * scale + offset, or None when not convertible."""
    registry = _registry()
    try:
        source_units, target_units = registry.from_ucum(source).units, registry.from_ucum(target).units
        zero = registry.Quantity(0, source_units).to(target_units)
        one = registry.Quantity(1, source_units).to(target_units)
    except Exception:  # pint: dimensionality errors; ucumvert: invalid units
        return None
    offset = Decimal(str(zero.magnitude))
    return Decimal(str(one.magnitude)) - offset, offset


def convert(value: Decimal | int | float, source: str, target: str) -> Decimal | None:
    """``value`` in UCUM unit ``source`` expressed in ``target`` (e.g. mg/dL → g/L, [degF] →
    Cel), or None when the units are not UCUM or measure different things (mg/dL → mmol/L
    needs a molar mass and is refused)."""
    source_code, target_code = ucum_code(source), ucum_code(target)
    if source_code is None or target_code is None:
        return None
    if source_code == target_code:
        return Decimal(str(value))
    factor = _factor(source_code, target_code)
    if factor is None:
        return None
    scale, offset = factor
    try:
        result = Decimal(str(value)) * scale + offset
    except InvalidOperation:  # pragma: no cover - Decimal(str(number)) is always valid
        return None
    # pint works in binary floats: drop the noise below 1e-9 (98.6 [degF] is 37 Cel).
    return result.quantize(Decimal("1e-9")).normalize()
