"""`clinstream send` against a real local MLLP listener (in-memory sink)."""

import asyncio
import sys

from connectors.mllp_server import MllpServer
from connectors.send_tool import messages_of, send_files
from kernel.events import Topics
from kernel.settings import MllpSettings
from tests.conftest import REPO, corpora_dir
from tests.fakes import MemorySink

HL7 = corpora_dir() / "hl7v2"
FILES = [
    HL7 / "microsoft-fhir-converter" / "ADT-A01-01.hl7",  # one message
    HL7 / "python-hl7" / "samples_003.hl7",  # FHS/BHS batch, MSH-15 NE
    HL7 / "python-hl7" / "samples_005.hl7",  # file with two messages
    HL7 / "microsoft-fhir-converter" / "from-unit-tests" / "Hl7v2DataValidatorTests_002.hl7",  # broken MSH-2
]


def test_files_are_split_into_messages():
    assert [len(messages_of(f)) for f in FILES] == [1, 1, 2, 1]


async def test_send_reports_each_message():
    server = MllpServer(MemorySink(), Topics(), MllpSettings(port=0))
    await server.start()
    seen = []
    report = await send_files(
        FILES,
        "127.0.0.1",
        server.port,
        timeout_s=5,
        progress=lambda done, total, _: seen.append((done, total)),
    )
    await server.stop()
    assert [s.code for s in report.sent] == ["AA", "-", "-", "-", "AR"]
    assert report.sent[-1].detail == "invalid encoding characters in MSH-2"
    assert not report.ok
    assert seen[-1] == (5, 5)


async def test_cli_send_exit_status_and_summary():
    server = MllpServer(MemorySink(), Topics(), MllpSettings(port=0))
    await server.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clinstream",
        "send",
        str(FILES[0]),
        str(FILES[3]),
        "--to",
        f"127.0.0.1:{server.port}",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    await server.stop()
    assert proc.returncode == 1
    assert "sent 2 messages" in out.decode()
    assert "AA 1, AR 1" in out.decode()
    assert "2/2" in err.decode()
