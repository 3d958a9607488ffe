"""Schemathesis against the OpenAPI document the running deployment publishes: every operation
of every HTTP service (FHIR and DICOM ingress, query API, CDS Hooks, alerts, drafts, agent
tools, health, metrics), with schema-shaped and schema-breaking inputs, never answers 5xx.

The deployment is `clinstream up` as its own process (embedded broker, Milvus Lite, ONNX), the
demo feed in it so that searches find something."""

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydicom.data import get_testdata_file
from schemathesis import GenerationMode

from clinstream.demo import demo_messages
from tests.integration.processes import TOKEN, Sender, base_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CT_SMALL = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # bundled with pydicom
# STOW bodies: arbitrary bytes, a real DICOM file, and that file cut short.
schemathesis.openapi.media_type(
    "application/dicom",
    st.one_of(
        st.binary(max_size=400), st.just(CT_SMALL), st.integers(0, len(CT_SMALL)).map(lambda n: CT_SMALL[:n])
    ),
)
EXAMPLES = 15  # per operation and mode


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemas")
    env = base_env("", tmp, CLINSTREAM_MLLP__PORT="0", CLINSTREAM_HTTP__PORT="0")
    env.pop("CLINSTREAM_KAFKA__BOOTSTRAP")  # embedded broker
    env.update(
        CLINSTREAM_DASHBOARD__ENABLED="false",
        CLINSTREAM_NOTES__GENERATOR="false",  # structured drafts: no 135M-parameter decoding per call
        CLINSTREAM_HTTP__JWT_HS256_SECRET="schemathesis-secret-of-at-least-32-chars",
    )
    log = tmp / "up.log"
    with log.open("wb") as out:  # a file, not a pipe: a full pipe would stall the server
        proc = subprocess.Popen(
            [sys.executable, "-m", "clinstream", "up"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ready = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and ready is None and proc.poll() is None:
        ready = re.search(r"mllp=\S+:(\d+) http=(\S+)", log.read_text(errors="replace"))
        time.sleep(0.2)
    if ready is None:
        proc.kill()
        pytest.fail("clinstream up never became ready:\n" + log.read_text(errors="replace")[-3000:])
    sender = Sender(int(ready.group(1)))

    asyncio.run(sender.run([(str(n), m) for n, m in enumerate(demo_messages())], rate=200))
    yield ready.group(2)
    proc.terminate()
    proc.wait(timeout=30)


def test_no_operation_answers_5xx(api):
    """Both schema-shaped (positive) and schema-breaking (negative) inputs for every operation."""
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json", headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20  # every service's operations are published
    calls: list[tuple[str, int]] = []
    skipped: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis_settings(
                max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case):
                response = case.call(base_url=api, headers=AUTH, timeout=60)
                calls.append((case.operation.label, response.status_code))
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path}: {response.status_code}"
                )

            try:
                call()
            except Unsatisfiable:
                # Nothing to break: no parameters or body (GET /health, /metrics, /index/stats).
                assert mode is GenerationMode.NEGATIVE, operation.label
                skipped.append(operation.label)
    print(
        f"\nschemathesis: {len(calls)} calls over {len(operations)} operations, none 5xx "
        f"(no negative cases possible for {len(skipped)})"
    )
    assert len({label for label, _ in calls}) == len(operations)
