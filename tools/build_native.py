"""Compile the HL7 v2 parser, datatypes and mappers with mypyc into build/native (run by `make install`).

They are plain typed Python; mypyc (part of mypy) compiles them to
C extension modules that run the same code about twice as fast. The sources stay the only
truth: the build works on a copy, keeps only the compiled modules, and records the sha256 of
each source it compiled. `kernel.native` lets a package use its compiled modules only while every
recorded source is unchanged (and the Python version matches); after any edit the package is
pure Python again until the next `make install`. `CLINSTREAM_NATIVE=0` turns them off.

Needs a C compiler (`make native` installs Debian's gcc when there is none).
``CLINSTREAM_NATIVE=0`` skips the build.

Usage: python tools/build_native.py [--out build/native]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Pure, hot and free of pydantic models (mypyc does not compile pydantic classes).
MODULES = (
    "kernel/hl7v2/parser.py",
    "kernel/hl7v2/datatypes.py",
    "kernel/hl7v2/dtm.py",
    "stream/adt.py",
    "stream/oru.py",
    "stream/orders.py",
    "stream/pharmacy.py",
    "stream/siu.py",
    "stream/mdm.py",
    "stream/vxu.py",
    "stream/ppr.py",
    "stream/coverage.py",
)
PACKAGES = sorted({module.split("/")[0] for module in MODULES})  # copied whole: mypyc resolves imports


def source_digests() -> dict[str, str]:
    return {m: hashlib.sha256((REPO / m).read_bytes()).hexdigest() for m in MODULES}


def build(out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="clinstream-native-") as tmp:
        work = Path(tmp)
        skip = shutil.ignore_patterns("__pycache__", "*.so")
        for package in PACKAGES:
            shutil.copytree(REPO / package, work / package, ignore=skip)
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *MODULES], cwd=work, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            sys.exit(f"mypyc failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
        suffix = sysconfig.get_config_var("EXT_SUFFIX")
        if out.exists():
            shutil.rmtree(out)
        for module in MODULES:
            compiled = (work / module).with_suffix(suffix)
            (out / module).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(compiled, (out / module).with_suffix(suffix))
        for runtime in work.glob(f"*__mypyc{suffix}"):  # mypyc's shared runtime module
            shutil.copy(runtime, out / runtime.name)
    manifest = {"python": sys.implementation.cache_tag, "suffix": suffix, "sources": source_digests()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "native")
    args = parser.parse_args()
    if os.environ.get("CLINSTREAM_NATIVE") == "0":
        print("CLINSTREAM_NATIVE=0: not compiling; the normalizer runs as pure Python")
        return
    manifest = args.out / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        same_python = recorded.get("python") == sys.implementation.cache_tag
        if same_python and recorded.get("sources") == source_digests():
            print(f"native modules up to date in {args.out}")
            return
    if importlib.util.find_spec("mypyc") is None:
        print("mypyc is not installed (it comes with the dev extra): the normalizer runs as pure Python")
        return
    build(args.out)
    print(f"compiled {len(MODULES)} modules into {args.out}")


if __name__ == "__main__":
    main()
