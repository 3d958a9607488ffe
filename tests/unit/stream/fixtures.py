"""Inputs of the normalizer tests taken from the third-party corpora."""

import json
from zoneinfo import ZoneInfo

from hypothesis import strategies as st

from kernel.errors import Hl7Error
from kernel.events import SUPPORTED_HL7_EVENTS, FhirInbound
from kernel.hl7v2.parser import decode_payload, parse_message
from stream.normalize import normalize_hl7
from tests.conftest import corpora_dir, hl7_corpus_files

UTC = ZoneInfo("UTC")
SYNTHEA = sorted((corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json"))


def _converted() -> list[str]:
    out = []
    for path in hl7_corpus_files():
        text = decode_payload(path.read_bytes()).replace("\r\n", "\r").replace("\n", "\r")
        try:
            msg = parse_message(text)
            if (msg.message_code, msg.trigger_event) not in SUPPORTED_HL7_EVENTS:
                continue
            normalize_hl7(text, tz=UTC)
        except Hl7Error:
            continue
        out.append(text)
    return out


MESSAGES = _converted()


field_text = st.text(alphabet=st.sampled_from(list("|^~\\&#0123456789.-+ AZaz:/TLE")), max_size=25)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(MESSAGES))
    segments = [s for s in text.split("\r") if s]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=1, max_value=max(1, len(segments) - 1)))
        if at >= len(segments):
            break
        action = draw(st.sampled_from(["field", "field", "field", "drop", "repeat", "truncate"]))
        fields = segments[at].split("|")
        if action == "field" and len(fields) > 1:
            index = draw(st.integers(min_value=1, max_value=len(fields) + 3))
            while len(fields) <= index:
                fields.append("")
            fields[index] = draw(field_text)
            segments[at] = "|".join(fields)
        elif action == "drop":
            del segments[at]
        elif action == "repeat":
            segments.insert(at, segments[at])
        else:
            segments[at] = segments[at][: draw(st.integers(min_value=3, max_value=max(3, len(segments[at]))))]
    return "\r".join(segments) + "\r"


def synthea_inbound(path):
    bundle = json.loads(path.read_text(encoding="utf-8-sig"))
    entries = [e for e in bundle["entry"] if "resource" in e]
    return FhirInbound(
        interaction="transaction",
        resources=[e["resource"] for e in entries],
        full_urls=[e.get("fullUrl") for e in entries],
    )
