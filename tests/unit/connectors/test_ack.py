from datetime import UTC, datetime

from connectors.ack import Receiver, build_ack
from kernel.errors import Hl7ParseError, MappingError
from kernel.hl7v2.parser import parse_message

NOW = datetime(2025, 3, 6, 8, 30, tzinfo=UTC)
MSG = parse_message(
    "MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|202503060830||ORU^R01^ORU_R01|LAB00012|P|2.5.1\rPID|1||100002^^^MERCY^MR\r"
)


def _ack(msg, code, error=None):
    raw = build_ack(
        msg, code, ack_control_id="ACK1", now=NOW, receiver=Receiver("CLINSTREAM", "HUB"), error=error
    )
    return parse_message(raw.decode())


def test_aa_mirrors_the_inbound_header():
    ack = _ack(MSG, "AA")
    msh, msa = ack.msh, ack.first("MSA")
    assert (msh.value(3), msh.value(4), msh.value(5), msh.value(6)) == (
        "CLINSTREAM",
        "HUB",
        "LIS",
        "MERCY_LAB",
    )
    assert msh.get(9) == "ACK^R01^ACK"
    assert (msh.value(10), msh.value(11), msh.value(12)) == ("ACK1", "P", "2.5.1")
    assert (msa.value(1), msa.value(2)) == ("AA", "LAB00012")
    assert ack.first("ERR") is None


def test_ae_carries_err_with_table_0357_code_and_location():
    error = MappingError(
        "OBX-5 is not a number", code=102, segment="OBX", sequence=2, field=5, control_id="LAB00012"
    )
    ack = _ack(MSG, "AE", error)
    err = ack.first("ERR")
    assert ack.first("MSA").value(1) == "AE"
    assert err.get(2) == "OBX^2^5"
    assert (err.value(3, 1), err.value(3, 2), err.value(3, 3)) == ("102", "Data type error", "HL70357")
    assert err.value(4) == "E"


def test_err1_for_versions_before_25():
    msg = parse_message("MSH|^~\\&|LIS|LAB|EHR|H|2025||ORU^R01|C1|P|2.3\rPID|1||1\r")
    ack = _ack(msg, "AE", MappingError("bad", code=101, segment="PID", field=3))
    err = ack.first("ERR")
    assert (err.value(1, 1), err.value(1, 3), err.value(1, 4, 1)) == ("PID", "3", "101")


def test_unreadable_input_gets_ar_with_default_separators():
    ack = _ack(None, "AR", Hl7ParseError("message does not start with an MSH segment", code=100, reject=True))
    assert ack.first("MSA").value(1) == "AR"
    assert ack.first("ERR").value(3, 1) == "100"


def test_reason_text_is_escaped():
    ack = _ack(MSG, "AE", MappingError("a|b^c&d~e\\f", code=207))
    assert ack.first("ERR").value(8) == "a|b^c&d~e\\f"


def test_non_default_separators_are_used_in_the_ack():
    msg = parse_message("MSH#$~\\&#LIS#LAB#EHR#H#2025##ORU$R01#C1#P#2.5.1\rPID#1##1\r")
    raw = build_ack(msg, "AA", ack_control_id="A", now=NOW, receiver=Receiver())
    assert raw.startswith(b"MSH#$~\\&#CLINSTREAM#CLINSTREAM#LIS#LAB#")
    assert parse_message(raw.decode()).first("MSA").value(2) == "C1"
