from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel.errors import Hl7Error, Hl7ParseError, MappingError
from kernel.hl7v2.dtm import to_fhir_datetime
from kernel.hl7v2.parser import (
    Separators,
    check_header,
    component_of,
    components,
    decode_payload,
    parse_message,
    patient_identifier,
    unescape,
)
from tests.conftest import hl7_corpus_files

UTC = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")
ADT = (
    "MSH|^~\\&|ADT|MERCY|EHR|MERCY|202503030415||ADT^A01^ADT_A01|CTRL1|P|2.5.1\r"
    "PID|1||100001^^^MERCY^MR~555^^^SSA^SS||DOE^JANE||19580312|F\r"
)


@pytest.mark.parametrize("path", hl7_corpus_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_corpus_file_parses_or_raises_typed_error(path):
    text = decode_payload(path.read_bytes())
    try:
        msg = parse_message(text)
        check_header(msg)
    except Hl7ParseError as exc:
        assert exc.code in (100, 101, 102)
        assert exc.reject
        return
    assert msg.msh.name == "MSH"
    assert msg.control_id


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("Hl7v2DataValidatorTests_001.hl7", 100),  # MSH|||
        ("Hl7v2DataValidatorTests_002.hl7", 102),  # duplicate separators ^~^#
    ],
)
def test_broken_separators_from_fhir_converter_tests_are_refused(corpora, name, code):
    text = (corpora / "hl7v2" / "microsoft-fhir-converter" / "from-unit-tests" / name).read_text()
    with pytest.raises(Hl7ParseError) as err:
        check_header(parse_message(text))
    assert err.value.code == code


@given(st.text(max_size=300))
def test_arbitrary_text_gives_message_or_typed_error(text):
    try:
        msg = parse_message(text)
    except Hl7Error:
        return
    assert msg.msh.name == "MSH"


@given(st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=200))
def test_arbitrary_msh_tail_gives_message_or_typed_error(tail):
    try:
        msg = parse_message("MSH" + tail)
        check_header(msg)
        patient_identifier(msg)
    except Hl7Error:
        return


def test_fields_follow_standard_numbering():
    msg = parse_message(ADT)
    assert msg.msh.get(1) == "|"
    assert msg.msh.get(2) == "^~\\&"
    assert msg.message_type == "ADT^A01"
    assert msg.control_id == "CTRL1"
    assert msg.version == "2.5.1"
    assert msg.sending_system == "ADT^MERCY"


@pytest.mark.parametrize("sep", ["\r", "\n", "\r\n"])
def test_segment_terminators_and_bom(sep):
    msg = parse_message("\ufeff" + ADT.replace("\r", sep) + sep + sep)
    assert [s.name for s in msg.segments] == ["MSH", "PID"]


def test_non_default_encoding_characters():
    text = ADT.replace("|", "#").replace("^", "$").replace("#$~\\&#", "#$~\\&#")
    msg = parse_message(text)
    assert msg.seps == Separators("#", "$", "~", "\\", "&")
    assert patient_identifier(msg) == ("MERCY", "100001")


def test_escape_sequences_are_decoded():
    seps = Separators()
    assert unescape(r"A\T\E \F\ B\S\C\R\D\E\end", seps) == "A&E | B^C~D\\end"
    assert unescape(r"line1\.br\line2", seps) == "line1\nline2"
    assert unescape("\\X41\\\\H\\bold\\N\\", seps) == "Abold"
    assert unescape("trailing\\", seps) == "trailing\\"


def test_patient_identifier_prefers_pid3_with_authority():
    assert patient_identifier(parse_message(ADT)) == ("MERCY", "100001")


def test_patient_identifier_falls_back_to_sending_facility():
    msg = parse_message(ADT.replace("100001^^^MERCY^MR~555^^^SSA^SS", "42"))
    assert patient_identifier(msg) == ("MERCY", "42")


def test_missing_pid_is_a_mapping_error():
    with pytest.raises(MappingError) as err:
        patient_identifier(parse_message(ADT.split("\r")[0]))
    assert (err.value.code, err.value.location) == (101, "PID-3")


def test_missing_control_id_is_refused():
    with pytest.raises(Hl7ParseError) as err:
        check_header(parse_message(ADT.replace("CTRL1", "")))
    assert (err.value.segment, err.value.field, err.value.code) == ("MSH", 10, 101)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025", "2025"),
        ("202503", "2025-03"),
        ("20250301", "2025-03-01"),
        ("202503011130", "2025-03-01T11:30:00+00:00"),
        ("20250301113015.25", "2025-03-01T11:30:15.250+00:00"),
        ("20250301113015-0500", "2025-03-01T11:30:15-05:00"),
        ("", None),
    ],
)
def test_hl7_timestamps_keep_precision(value, expected):
    assert to_fhir_datetime(value, UTC, segment="OBX", field=14) == expected


def test_timestamp_without_offset_uses_the_hospital_zone():
    assert to_fhir_datetime("202507011200", NY, segment="OBX", field=14) == "2025-07-01T12:00:00-04:00"


@pytest.mark.parametrize("value", ["2025/03/01", "20251301", "20250230", "2025030", "20250301256000"])
def test_malformed_timestamps_are_mapping_errors(value):
    with pytest.raises(MappingError) as err:
        to_fhir_datetime(value, UTC, segment="OBX", field=14)
    assert err.value.location == "OBX-14"
    assert value not in str(err.value)


def test_latin1_payload_decodes():
    assert decode_payload("MÜLLER".encode("latin-1")) == "MÜLLER"


@given(st.text(alphabet=st.sampled_from(list("ab^&~\\\\XFST.0")), max_size=40))
def test_components_agree_with_component_of(raw):
    seps = parse_message("MSH|^~\\&|A|B\r").seps
    parts = components(raw, seps)
    for k in range(1, len(parts) + 3):
        assert (parts[k - 1] if k <= len(parts) else "") == component_of(raw, seps, k)


def test_explicit_null_reads_as_empty():
    msg = parse_message('MSH|^~\\&|A|B\rPID|1||1^^^X||DOE^""||""|F|||""^^Springfield\r')
    pid = msg.first("PID")
    assert pid.value(7) == ""  # birth date nulled
    assert pid.value(5, 2) == ""
    assert components(pid.get(11), msg.seps)[:3] == ["", "", "Springfield"]
    assert pid.value(8) == "F"
