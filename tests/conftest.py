"""Shared fixtures: the third-party corpora beside the clone (../shared/corpora)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Every stack a test starts runs the notes stage, drafting from chart data only: a draft with the
# model takes seconds of both cores, and stacks that test other stages would wait on it. The tests
# of drafting with the model (tests/integration/stack/test_notes.py) switch it on in their settings.
os.environ.setdefault("CLINSTREAM_NOTES__GENERATOR", "false")
# Test stacks run without the dashboard process; its own tests switch it on.
os.environ.setdefault("CLINSTREAM_DASHBOARD__ENABLED", "false")
# Tansu completes a consumer group join after half the session timeout, and a stack joins a group
# per stage: 3 s instead of the production 10 s saves seconds on every stack and stage process the
# tests start on it, and on either broker notices a killed stage sooner (the embedded Apache Kafka
# allows sessions down to 1 s).
os.environ.setdefault("CLINSTREAM_KAFKA__SESSION_TIMEOUT_MS", "3000")


def pytest_xdist_make_scheduler(config, log):
    """With pytest-xdist (`make test` runs two workers), the tests that run several stage
    processes at once, or a browser (tests/integration/system/: faults, outages, scale-out, the
    power cut, the dashboard) run one after the other on one worker: two of them at once
    overload two cores.
    Every other test file (unit tests, one-part and whole-stack integration tests, and
    tests/integration/apps/: one `clinstream` process each) goes to whichever worker is free."""
    from xdist.scheduler import LoadScopeScheduling

    class ProcessesApart(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            if nodeid.startswith("tests/integration/system/"):
                return "tests/integration/system"
            return super()._split_scope(nodeid)

    return ProcessesApart(config, log)


def corpora_dir() -> Path:
    """`CLINSTREAM_CORPORA`, else `../shared/corpora` next to the clone, else next to the local
    checkout it was cloned from (a throwaway clone in a temporary folder)."""
    configured = os.environ.get("CLINSTREAM_CORPORA")
    if configured:
        candidates = [Path(configured)]
    else:
        candidates = [REPO.parent / "shared" / "corpora"]
        origin = _local_origin()
        if origin is not None:
            candidates.append(origin.parent / "shared" / "corpora")
    for path in candidates:
        if (path / "hl7v2").is_dir():
            return path
    raise RuntimeError(f"third-party corpora not found at {candidates[0]}; set CLINSTREAM_CORPORA")


def _local_origin() -> Path | None:
    """The folder this clone was cloned from, when that is a local checkout."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
        check=False,
    )
    url = done.stdout.strip().removeprefix("file://")
    if not url or "://" in url or ":" in url.split("/", 1)[0]:
        return None  # unset, or a remote (https://, ssh, host:path)
    path = Path(url).expanduser()
    return path if path.is_dir() else None


def hl7_corpus_files() -> list[Path]:
    """Every HL7 v2 file of the corpora, sorted."""
    return sorted(p for p in (corpora_dir() / "hl7v2").rglob("*") if p.is_file())


def synthea_files() -> list[Path]:
    """The Synthea patient bundles of the corpora, sorted."""
    return sorted((corpora_dir() / "fhir" / "smart-synthea-r4").glob("*.json"))


def synthea_resources(path: Path) -> list[dict]:
    """A Synthea bundle's resources with its ``urn:uuid:`` references rewritten to ``Type/id``,
    as the FHIR ingress resolves them."""
    import json

    bundle = json.loads(path.read_text(encoding="utf-8-sig"))
    resources = [e["resource"] for e in bundle["entry"]]
    by_url = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}

    def fix(value):
        if isinstance(value, dict):
            return {k: (by_url.get(v, v) if k == "reference" else fix(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return [fix(r) for r in resources]


@pytest.fixture(scope="session")
def corpora() -> Path:
    return corpora_dir()


@pytest.fixture
def identity_model(tmp_path):
    """A real ONNX file of one Identity node (x → y, float vector) for session tests."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "identity.onnx"
    onnx.save(model, path)
    return path
