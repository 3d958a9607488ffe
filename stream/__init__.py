"""Streaming normalization stage and the contracts every stage shares.

Kept free of FastStream/aiokafka imports so that importing the contracts
(`stream.events`, `stream.settings`, `stream.errors`, `stream.hl7v2`) is cheap.

The parser and mappers may run compiled: `tools/build_native.py` (run by `make install`)
compiles them with mypyc into ``build/native``. They are used only while each compiled
module's source is byte-for-byte the one it was compiled from; otherwise, or with
``CLINSTREAM_NATIVE=0``, this package is plain Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def native_dir(root: Path) -> Path | None:
    """``root/build/native`` when its compiled modules match the sources and this Python."""
    if os.environ.get("CLINSTREAM_NATIVE", "1") == "0":
        return None
    native = root / "build" / "native"
    try:
        manifest = json.loads((native / "manifest.json").read_text())
        if manifest["python"] != sys.implementation.cache_tag:
            return None
        for source, digest in manifest["sources"].items():
            if hashlib.sha256((root / source).read_bytes()).hexdigest() != digest:
                return None  # edited since the build: run the source
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return native


_NATIVE = native_dir(Path(__file__).resolve().parent.parent)
if _NATIVE is not None:
    sys.path.append(str(_NATIVE))  # mypyc's shared runtime module, imported by top-level name
    __path__.insert(0, str(_NATIVE / "stream"))

NATIVE: bool = _NATIVE is not None
"""Whether the compiled parser and mappers are in use (the benchmark prints it)."""
