"""Property tests: real corpus messages, mutated field by field, give FHIR or our typed error.

Each example takes a converted corpus message and replaces fields, components or whole
segments with arbitrary text (separators and escape characters included), drops or repeats
segments. `normalize_hl7` must return validated resources or raise an `Hl7Error`, never
another exception: the handler turns exactly those into dead letters.
"""

from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.errors import Hl7Error
from kernel.events import SUPPORTED_HL7_EVENTS
from kernel.hl7v2.parser import decode_payload, parse_message
from stream.normalize import normalize_hl7
from tests.conftest import hl7_corpus_files

UTC = ZoneInfo("UTC")


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


def test_corpus_gives_enough_seeds():
    assert len(MESSAGES) >= 400


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_give_resources_or_a_typed_error(text):
    try:
        result = normalize_hl7(text, tz=UTC)
    except Hl7Error:
        return
    assert result.resources[0]["resourceType"] == "Patient"
    keys = [(r["resourceType"], r["id"]) for r in result.resources]
    assert len(keys) == len(set(keys))
