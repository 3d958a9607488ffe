"""Write `clinstream/demo_feed.hl7`: the bundled sample feed of `clinstream demo`.

Synthetic patients (invented names and numbers), realistic message shapes: an ADT^A01
admission then basic metabolic panels and blood counts (ORU^R01, LOINC-coded, UCUM
units, reference ranges and flags) for each. One potassium is critical (6.4 mmol/L);
one message has broken encoding characters (refused at the MLLP edge with AR) and one
has a non-numeric NM value (accepted, then dead-lettered by the normalizer).
Messages are separated by a blank line; segments by LF (the demo sends CR).

Usage: python tools/make_demo_feed.py
"""

from __future__ import annotations

import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "clinstream" / "demo_feed.hl7"
PATIENTS = [
    ("100001", "DOE", "JANE", "19580312", "F"),
    ("100002", "ROE", "RICHARD", "19471130", "M"),
    ("100003", "PARK", "MINJI", "19890704", "F"),
    ("100004", "OKAFOR", "CHIDI", "19631021", "M"),
    ("100005", "NOVAK", "ELENA", "19750215", "F"),
    ("100006", "SILVA", "TIAGO", "19520908", "M"),
    ("100007", "HALL", "MARGARET", "19400117", "F"),
    ("100008", "KHAN", "ARJUN", "19991225", "M"),
]
# (LOINC, display, unit, low, high, typical mean, sd)
BMP = [
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145, 139, 2.5),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 4.2, 0.35),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 98, 107, 102, 2.5),
    ("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 22, 29, 25, 2),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 7, 20, 15, 4),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, 0.95, 0.2),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 105, 20),
]
CBC = [
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.0, 11.0, 7.5, 2),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 13.5, 1.5),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 250, 60),
]


def _panel_code(panel: list) -> str:
    if panel is BMP:
        return "80048^Basic metabolic panel^C4"
    return "58410-2^CBC panel - Blood by Automated count^LN"


def _fmt(value: float, high: float) -> str:
    return f"{value:.0f}" if high >= 50 else f"{value:.1f}"


def _oru(
    rng: random.Random,
    n: int,
    pat: tuple[str, ...],
    day: int,
    panel: list,
    order: str,
    override: dict[str, str] | None = None,
) -> str:
    mrn, family, given, dob, sex = pat
    ts = f"202503{day:02d}0{6 + n % 3}30"
    segs = [
        f"MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|{ts}||ORU^R01^ORU_R01|LAB{n:05d}|P|2.5.1",
        f"PID|1||{mrn}^^^MERCY^MR||{family}^{given}||{dob}|{sex}",
        f"PV1|1|I|4W^412^B^MERCY||||||||||||||||V{mrn}{day:02d}^^^MERCY",
        f"OBR|1|ORD{order}|FIL{order}^LIS|{_panel_code(panel)}|||{ts}",
    ]
    for i, (loinc, name, unit, low, high, mean, sd) in enumerate(panel, start=1):
        value = _fmt(max(0.1, rng.gauss(mean, sd)), high)
        if override and loinc in override:
            value = override[loinc]
        try:
            v = float(value)
            flag = "HH" if loinc == "2823-3" and v >= 6.0 else "H" if v > high else "L" if v < low else "N"
        except ValueError:
            flag = ""
        segs.append(
            f"OBX|{i}|NM|{loinc}^{name}^LN||{value}|{unit}^{unit}^UCUM|{_fmt(low, high)}-{_fmt(high, high)}"
            f"|{flag}|||F|||{ts}"
        )
    return "\n".join(segs)


def main() -> None:
    rng = random.Random(20250301)  # noqa: S311 - reproducible synthetic data
    messages: list[str] = []
    n = 0
    for p_index, pat in enumerate(PATIENTS):
        mrn, family, given, dob, sex = pat
        day = 3 + p_index
        n += 1
        messages.append(
            "\n".join(
                [
                    f"MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503{day:02d}0415||ADT^A01^ADT_A01|ADT{n:05d}|P|2.5.1",
                    f"EVN|A01|202503{day:02d}0415",
                    f"PID|1||{mrn}^^^MERCY^MR||{family}^{given}||{dob}|{sex}|||"
                    f"{10 + p_index} Main St^^Springfield^IL^62701",
                    f"PV1|1|I|4W^412^B^MERCY||||||||||||||||V{mrn}{day:02d}^^^MERCY|||||||||||||||||||||||||"
                    f"202503{day:02d}0415",
                ]
            )
        )
        for k, panel in enumerate((BMP, CBC, BMP)):
            n += 1
            override = None
            if p_index == 1 and k == 2:
                override = {"2823-3": "6.4"}  # the critical potassium
            if p_index == 4 and k == 1:
                override = {"718-7": "12,9"}  # decimal comma in an NM field: normalizer dead letter
            messages.append(_oru(rng, n, pat, day + k, panel, f"{n:06d}", override))
    # Broken encoding characters (only three, escape missing): refused at the MLLP edge.
    messages.insert(
        9,
        "MSH|^~&|LIS|MERCY_LAB|EHR|MERCY|202503071200||ORU^R01|LAB99999|P|2.5.1\n"
        "PID|1||100003^^^MERCY^MR||PARK^MINJI||19890704|F",
    )
    OUT.write_text("\n\n".join(messages) + "\n")
    print(f"wrote {len(messages)} messages to {OUT}")


if __name__ == "__main__":
    main()
