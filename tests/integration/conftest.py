"""Session-wide real components: one embedded Tansu broker and the built ONNX embedding model.

Each test gets fresh topic names, consumer groups and Milvus Lite files, so tests share
the broker process but no data.
"""

from __future__ import annotations

import uuid

import pytest

from clinstream.models import embedding_dir
from clinstream.runtime import EmbeddedBroker
from indexer.ort_session import Embedder
from kernel.events import Topics


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
async def broker():
    async with EmbeddedBroker() as b:
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
