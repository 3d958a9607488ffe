"""The compiled HL7 v2 parser, datatypes and mappers, used only while they match their sources.

`tools/build_native.py` (run by `make install`) compiles the hot pure modules of `kernel.hl7v2`
and `stream` with mypyc into ``build/native``, recording the sha256 of each source. A package
puts its compiled modules first on its ``__path__`` (`use_compiled`) only while every recorded
source is byte-for-byte unchanged and the Python is the one they were built for; otherwise, or
with ``CLINSTREAM_NATIVE=0``, everything runs as plain Python.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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


_NATIVE = native_dir(ROOT)
if _NATIVE is not None and str(_NATIVE) not in sys.path:
    sys.path.append(str(_NATIVE))  # mypyc's shared runtime module, imported by top-level name

NATIVE: bool = _NATIVE is not None
"""Whether the compiled modules are in use (the normalizer benchmark prints it)."""


def use_compiled(package: str, path: list[str]) -> bool:
    """Put ``package``'s compiled modules first on its ``__path__``; whether there are any."""
    if _NATIVE is None:
        return False
    compiled = _NATIVE.joinpath(*package.split("."))
    if not compiled.is_dir():
        return False
    path.insert(0, str(compiled))
    return True
