"""The compiled parser and mappers: used only while they match their sources, and they convert
the whole corpus exactly as the pure-Python modules do."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

import stream
from kernel.native import native_dir
from tests.conftest import REPO

DIGEST = """
import hashlib, json, sys
from pathlib import Path
from zoneinfo import ZoneInfo
import stream
from stream.convert import convert_text
from kernel.hl7v2.parser import decode_payload
h = hashlib.sha256()
count = 0
for path in sorted(Path(sys.argv[1]).rglob("*")):
    if not path.is_file():
        continue
    for item in convert_text(decode_payload(path.read_bytes()), tz=ZoneInfo("UTC"), source_system=path.name):
        outcome = item.bundle if item.bundle is not None else [type(item.error).__name__, str(item.error)]
        h.update(json.dumps(outcome, sort_keys=True).encode())
        count += 1
print(stream.NATIVE, count, h.hexdigest())
"""


def _run_digest(corpora, native):
    env = {**os.environ, "CLINSTREAM_NATIVE": "1" if native else "0"}
    done = subprocess.run(
        [sys.executable, "-c", DIGEST, str(corpora / "hl7v2")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    used, count, digest = done.stdout.split()
    return used == "True", int(count), digest


@pytest.mark.skipif(not stream.NATIVE, reason="compiled modules not built or stale: make native")
def test_compiled_modules_convert_the_corpus_exactly_as_pure_python(corpora):
    compiled = _run_digest(corpora, native=True)
    pure = _run_digest(corpora, native=False)
    assert compiled[0] is True
    assert pure[0] is False
    assert compiled[1] == pure[1] > 700  # every message of every file: bundles and typed errors
    assert compiled[2] == pure[2]


def _tree(tmp_path, python=sys.implementation.cache_tag):
    source = tmp_path / "kernel" / "hl7v2" / "parser.py"
    source.parent.mkdir(parents=True)
    source.write_text("X = 1\n")
    native = tmp_path / "build" / "native"
    native.mkdir(parents=True)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    manifest = {"python": python, "sources": {"kernel/hl7v2/parser.py": digest}}
    (native / "manifest.json").write_text(json.dumps(manifest))
    return source, native


def test_used_while_the_sources_match(tmp_path, monkeypatch):
    monkeypatch.delenv("CLINSTREAM_NATIVE", raising=False)
    _, native = _tree(tmp_path)
    assert native_dir(tmp_path) == native


def test_not_used_after_a_source_changes(tmp_path, monkeypatch):
    monkeypatch.delenv("CLINSTREAM_NATIVE", raising=False)
    source, _ = _tree(tmp_path)
    source.write_text("X = 2\n")
    assert native_dir(tmp_path) is None


def test_not_used_for_another_python(tmp_path, monkeypatch):
    monkeypatch.delenv("CLINSTREAM_NATIVE", raising=False)
    _tree(tmp_path, python="cpython-399")
    assert native_dir(tmp_path) is None


def test_not_used_when_turned_off_missing_or_unreadable(tmp_path, monkeypatch):
    _, native = _tree(tmp_path)
    monkeypatch.setenv("CLINSTREAM_NATIVE", "0")
    assert native_dir(tmp_path) is None
    monkeypatch.delenv("CLINSTREAM_NATIVE")
    (native / "manifest.json").write_text("{not json")
    assert native_dir(tmp_path) is None
    (native / "manifest.json").unlink()
    assert native_dir(tmp_path) is None
