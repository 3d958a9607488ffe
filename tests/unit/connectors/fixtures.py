"""Messages of the connector tests."""

ORU = (
    b"MSH|^~\\&|LIS|MERCY_LAB|EHR|MERCY|202503060830||ORU^R01^ORU_R01|LAB%d|P|2.5.1\r"
    b"PID|1||100002^^^MERCY^MR||ROE^RICHARD||19471130|M\r"
    b"OBX|1|NM|2823-3^Potassium^LN||6.4|mmol/L|3.5-5.1|HH|||F\r"
)
