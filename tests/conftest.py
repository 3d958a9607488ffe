"""Shared fixtures: the third-party corpora beside the clone (../shared/corpora)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def corpora_dir() -> Path:
    """`CLINSTREAM_CORPORA`, else `../shared/corpora` next to the clone."""
    configured = os.environ.get("CLINSTREAM_CORPORA")
    path = Path(configured) if configured else REPO.parent / "shared" / "corpora"
    if not (path / "hl7v2").is_dir():
        raise RuntimeError(f"third-party corpora not found at {path}; set CLINSTREAM_CORPORA")
    return path


def hl7_corpus_files() -> list[Path]:
    """Every HL7 v2 file of the corpora, sorted."""
    return sorted(p for p in (corpora_dir() / "hl7v2").rglob("*") if p.is_file())


@pytest.fixture(scope="session")
def corpora() -> Path:
    return corpora_dir()
