"""Property tests: real corpus messages, mutated field by field, give FHIR or our typed error.

Each example takes a converted corpus message and replaces fields, components or whole
segments with arbitrary text (separators and escape characters included), drops or repeats
segments. `normalize_hl7` must return validated resources, or refuse only what cannot be
parsed or attributed (an `Hl7ParseError`, a type it does not map, no patient identity, a
Patient FHIR rejects), never another exception: the handler turns exactly those into dead
letters.
"""

from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings

from kernel.errors import Hl7ParseError, MappingError, UnsupportedMessageError
from stream.normalize import normalize_hl7
from tests.unit.stream.fixtures import MESSAGES, mutated

UTC = ZoneInfo("UTC")


def test_corpus_gives_enough_seeds():
    assert len(MESSAGES) >= 400


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_messages_give_resources_or_a_typed_error(text):
    try:
        result = normalize_hl7(text, tz=UTC)
    except (Hl7ParseError, UnsupportedMessageError):
        return  # unreadable, or a type we do not map: refused by design
    except MappingError as exc:  # only when the message cannot be attributed to a patient
        assert exc.location == "PID-3" or str(exc).startswith("Patient "), str(exc)
        return
    assert result.resources[0]["resourceType"] == "Patient"
    keys = [(r["resourceType"], r["id"]) for r in result.resources]
    assert len(keys) == len(set(keys))
