"""`clinstream convert`: offline HL7 v2 → FHIR R4 transaction Bundles, on the corpus."""

import json
import subprocess
import sys
from zoneinfo import ZoneInfo

from fhir.resources.R4B.bundle import Bundle

from kernel.hl7v2.parser import decode_payload
from stream.convert import convert_text
from tests.conftest import REPO, corpora_dir

UTC = ZoneInfo("UTC")
SAMPLES = corpora_dir() / "hl7v2" / "microsoft-fhir-converter"


def test_every_bundle_is_a_valid_transaction_whose_references_resolve():
    converted = 0
    for path in sorted(SAMPLES.glob("*.hl7")):
        for item in convert_text(decode_payload(path.read_bytes()), tz=UTC, source_system=path.name):
            if item.bundle is None:
                assert item.error is not None
                continue
            converted += 1
            Bundle.model_validate(item.bundle)
            urls = {e["request"]["url"] for e in item.bundle["entry"]}
            for entry in item.bundle["entry"]:
                resource = entry["resource"]
                assert entry["request"]["url"] == f"{resource['resourceType']}/{resource['id']}"
                for element in ("subject", "patient", "encounter"):
                    if element in resource:
                        assert resource[element]["reference"] in urls
    assert converted >= 30


def test_batch_file_converts_each_message_and_is_deterministic():
    text = decode_payload((corpora_dir() / "hl7v2" / "python-hl7" / "samples_005.hl7").read_bytes())
    first = list(convert_text(text, tz=UTC))
    second = list(convert_text(text, tz=UTC))
    assert len(first) == 2
    assert [c.bundle for c in first] == [c.bundle for c in second]


def test_cli_reports_failures_and_keeps_converting(tmp_path):
    good = SAMPLES / "ADT-A01-01.hl7"
    bad = SAMPLES / "from-unit-tests" / "Hl7v2DataValidatorTests_002.hl7"
    result = subprocess.run(
        [sys.executable, "-m", "clinstream", "convert", str(good), str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert json.loads(line)["type"] == "transaction"
    assert "Hl7ParseError MSH-2 (HL7 102)" in result.stderr
    assert "converted 1 of 2 messages from 2 files; failed: Hl7ParseError 1" in result.stderr
    out = tmp_path / "bundles"
    result = subprocess.run(
        [sys.executable, "-m", "clinstream", "convert", str(good), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0
    assert [p.name for p in out.iterdir()] == ["ADT-A01-01-1.json"]


def test_cli_reports_unmapped_content_and_structure(tmp_path):
    conforming = tmp_path / "adt.hl7"
    conforming.write_text(
        "MSH|^~\\&|A|MERCY|C|D|20250101||ADT^A01^ADT_A01|1|P|2.5\rEVN|A01|20250101\r"
        "PID|1||1^^^MERCY^MR||DOE^JANE||||||||||||ACCT-9\rPV1|1|I\rZPI|1|site data\r"
    )
    missing_evn = tmp_path / "adt2.hl7"
    missing_evn.write_text("MSH|^~\\&|A|MERCY|C|D|20250101||ADT^A01^ADT_A01|2|P|2.5\rPID|1||1^^^MERCY^MR\r")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clinstream",
            "convert",
            str(conforming),
            str(missing_evn),
            "--check-structure",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "converted 2 of 2 messages" in result.stderr
    assert "unmapped content (segment or field: times): " in result.stderr
    assert "PID-17 1" in result.stderr
    assert "ZPI 1" in result.stderr
    assert "adt2.hl7#1: structure: ValidationError: Missing required child ADT_A01.EVN" in result.stderr
    assert "ACCT-9" not in result.stderr  # values never appear, only locations
    assert result.returncode == 1  # a message that does not conform fails the check


def test_structure_problems_never_show_values():
    from stream.structure import structure_problems

    head = "MSH|^~\\&|A|B|C|D|20250101||ADT^A01^ADT_A01|1|P|2.5\rEVN|A01|20250101\r"
    [bad_date] = structure_problems(head + "PID|1||1^^^X||DOE^JANE||1958XX12|F\rPV1|1|I\r")
    assert bad_date == "ValueError: … is not an HL7 valid date value"
    [too_long] = structure_problems(head + "PID|1||1^^^X||DOE^JANE||19580312|History and physical exam\r")
    assert "History" not in too_long
    assert too_long.startswith("MaxLengthReached: The value … exceed")
    [missing] = structure_problems(head.replace("EVN|A01|20250101\r", "") + "PID|1||1^^^X\r")
    assert missing == "ValidationError: Missing required child ADT_A01.EVN"


def test_cli_reports_data_quality_issues_and_strict_refuses_them():
    ig = SAMPLES.parent / "hl7-v2-to-fhir-ig" / "test_conversions_MDM_T02.hl7"
    command = [sys.executable, "-m", "clinstream", "convert", str(ig)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0
    assert "warning malformed-value OBX[4]-5: OBX-5 ED data is not valid Base64" in result.stderr
    assert "1 converted with data-quality issues: malformed-value 1" in result.stderr
    [line] = result.stdout.splitlines()
    kinds = {e["resource"]["resourceType"] for e in json.loads(line)["entry"]}
    assert "DocumentReference" in kinds  # the note's text lines converted; only the bad attachment did not
    strict = subprocess.run(
        [*command, "--strict"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert strict.returncode == 1
    assert "MappingError OBX-5 (HL7 102)" in strict.stderr
