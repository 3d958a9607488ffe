"""Session-wide real components (one embedded broker, the built ONNX embedding model) and the one
factory of running stacks.

The session's broker is the embedded Apache Kafka (single-node KRaft, idempotent and transactional
producers on), the production engine; ``CLINSTREAM_TEST_BROKER=tansu`` runs the suite on Tansu.

Each test gets fresh topic names, consumer groups and Milvus Lite files, so tests share
the broker process but no data. `start_stack` starts the stack `clinstream up` runs, on those,
with the sections a test overrides; `ehr` is a stand-in EHR for outbound delivery.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from clinstream.http import make_server
from clinstream.models import embedding_dir
from clinstream.runtime import EmbeddedBroker, EmbeddedKafka
from clinstream.settings import Settings
from clinstream.stack import running_stack
from connectors.mllp_server import MllpServer
from indexer.ort_session import Embedder
from kernel.events import Topics
from kernel.settings import MllpSettings
from tests.fakes import MemorySink
from tests.integration.support import TOKEN


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class ExternalBroker:
    bootstrap: str
    kind: str = "kafka"
    transactional: bool = True


def broker_kind() -> str:
    """The engine of the session's broker: ``kafka`` (default) or ``tansu``."""
    return os.environ.get("CLINSTREAM_TEST_BROKER", "kafka")


def new_broker(kind: str, data_dir, **options) -> EmbeddedBroker:
    """An embedded broker of ``kind`` (Apache Kafka keeps its log in ``data_dir``)."""
    if kind == "kafka":
        return EmbeddedKafka(data_dir, **options)
    return EmbeddedBroker(**options)


@pytest.fixture(scope="session")
async def broker(tmp_path_factory):
    """The embedded broker; or, with ``CLINSTREAM_TEST_BOOTSTRAP=host:port``, a broker already
    running (tests that stop or restart the broker start their own)."""
    external = os.environ.get("CLINSTREAM_TEST_BOOTSTRAP")
    if external:
        yield ExternalBroker(external)
        return
    data = tmp_path_factory.mktemp("broker")
    async with new_broker(broker_kind(), data, log_path=data / "broker.log") as b:
        yield b


@pytest.fixture(scope="session")
def model_dir():
    path = embedding_dir()
    if not (path / "manifest.json").is_file():
        pytest.fail(f"embedding model not built at {path}: run `make models`")
    return path


@pytest.fixture(scope="session")
def embedder(model_dir):
    return Embedder(model_dir, providers=("CPUExecutionProvider",))


@pytest.fixture
def prefix():
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def topics(prefix):
    return Topics().with_prefix(prefix)


def stack_settings(broker, var_dir, **sections):
    """A test stack's settings: the session's broker, free ports, its own data directory.

    Each keyword is a settings section whose keys override these defaults (or add to them).
    """
    merged = {
        "kafka": {"bootstrap": broker.bootstrap, "enable_idempotence": broker.kind != "tansu"},
        "mllp": {"port": 0},
        "http": {"port": 0, "api_token": TOKEN},
    }
    for name, values in sections.items():
        merged[name] = {**merged.get(name, {}), **values}
    return Settings(var_dir=var_dir, **merged)


@pytest.fixture
def start_stack(broker, topics, prefix, tmp_path):
    """``start_stack(**sections)``: an async context manager running the whole stack."""

    def start(**sections):
        settings = stack_settings(broker, tmp_path, **sections)
        return running_stack(settings, topics=topics, group_prefix=prefix)

    return start


@pytest.fixture
async def ehr():
    """A stand-in EHR: an MLLP listener and a FHIR endpoint that records PUTs."""
    mllp_sink = MemorySink()
    mllp = MllpServer(mllp_sink, Topics(), MllpSettings(port=0))
    await mllp.start()
    puts = []

    async def put(request):
        puts.append((request.url.path, request.headers.get("authorization"), await request.json()))
        return JSONResponse({"resourceType": "Flag"}, status_code=201 if len(puts) > 1 else 503)

    server = make_server(Starlette(routes=[Route("/fhir/{type}/{id}", put, methods=["PUT"])]), "127.0.0.1", 0)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield mllp, mllp_sink, f"http://127.0.0.1:{port}/fhir", puts
    server.should_exit = True
    await task
    await mllp.stop()
