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

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from clinstream.demo import demo_messages
from tests.integration.processes import TOKEN, Sender, base_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "clinstream", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready, lines = None, []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and ready is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        ready = re.search(r"mllp=\S+:(\d+) http=(\S+)", line)
    if ready is None:
        proc.kill()
        pytest.fail("clinstream up never became ready:\n" + "".join(lines[-30:]))
    sender = Sender(int(ready.group(1)))

    asyncio.run(sender.run([(str(n), m) for n, m in enumerate(demo_messages())], rate=200))
    yield ready.group(2)
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def api_schema(api):
    return schemathesis.openapi.from_url(f"{api}/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case, api):
    response = case.call(base_url=api, headers=AUTH, timeout=60)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code}"
