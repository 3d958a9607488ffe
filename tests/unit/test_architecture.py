"""The layout rules of STYLE.md, checked on the source: pure modules stay pure, stages stay apart."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGES = ("connectors", "stream", "indexer", "inference", "dashboard", "exports", "agents")
IO_LIBRARIES = {
    "faststream",
    "aiokafka",
    "httpx",
    "pymilvus",
    "onnxruntime",
    "streamlit",
    "uvicorn",
    "starlette",
    "socket",
    "asyncio",
    "subprocess",
}
PURE_MODULES = [
    "connectors/framing.py",
    "connectors/ack.py",
    "stream/hl7v2.py",
    "stream/adt.py",
    "stream/oru.py",
    "stream/normalize.py",
    "stream/events.py",
    "stream/settings.py",
    "stream/errors.py",
    "indexer/chunking.py",
    "inference/analytes.py",
    "inference/state.py",
    "inference/findings.py",
    "inference/news2.py",
    "inference/sepsis.py",
    "inference/critical.py",
    "inference/aki.py",
    "inference/hygiene.py",
    "inference/rules.py",
    "inference/cards.py",
    "inference/writeback.py",
    "inference/medsafety.py",
    "inference/risk.py",
    "inference/notes.py",
    "dashboard/queries.py",
    "dashboard/auth.py",
    "stream/imaging.py",
    "stream/openapi.py",
    "stream/genomics.py",
    "exports/deid.py",
    "exports/datasets.py",
    "exports/card.py",
]
# What a stage may import from another stage: the shared contracts.
SHARED = {
    "stream.events",
    "stream.settings",
    "stream.errors",
    "stream.hl7v2",
    "stream.kafka",
    "stream.fhir_models",
    "stream.units",  # UCUM conversion: decision support compares values in canonical units
    "stream.identity",  # how a FHIR Patient maps to the stream's patient key (CDS Hooks needs it)
    "stream.onnx_session",  # ONNX Runtime sessions, the same provider choice for every model
    "stream.attachments",  # a note's text, read by the indexer and decision support
    # A resource in chart words, pure: the text the index holds is the text a draft cites and the
    # grounding guard checks, so both stages must render it the same way.
    "indexer.rendering",
    # Dead letters: reading the topic and writing them back, the same for the CLI and the dashboard.
    "stream.replay",
    # When a resource happened: the index's time filter and an export's timeline agree on it.
    "indexer.chunking",
    # One ImagingStudy id per Study Instance UID: the DICOM connector and imaging reports share it.
    "stream.imaging",
    # OpenAPI builders: every service describes its routes the same way for /openapi.json.
    "stream.openapi",
}


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io(module):
    roots = {name.split(".")[0] for name in _imports(REPO / module)}
    assert roots & IO_LIBRARIES == set()


@pytest.mark.parametrize("stage", STAGES)
def test_stages_import_only_contracts_of_other_stages(stage):
    offending = []
    for path in (REPO / stage).rglob("*.py"):
        for name in _imports(path):
            root = name.split(".")[0]
            if root == "clinstream":
                offending.append(f"{path.name}: {name}")
            elif root in STAGES and root != stage and name not in SHARED:
                offending.append(f"{path.name}: {name}")
    assert offending == []


def test_stream_package_import_is_cheap():
    assert "faststream" not in (REPO / "stream" / "__init__.py").read_text()
