"""The layout of shared/STYLE.md as folder rules, checked on the source. No module is listed here.

1. The kernel (`kernel/`) imports only the kernel.
2. A stage imports only the kernel and itself. The stages are the project's top-level packages
   but the kernel and the composition root; a package that holds nothing but subpackages
   (`inference/`) holds one stage per subpackage. Nothing imports the composition root.
3. Every module is pure unless its name says which technology or role it adapts (`app.py`,
   `http.py`, `*_server.py`, `*_client.py`, `*_store.py`, `*_session.py`, `*_sink.py`,
   `*_source.py`, `*_files.py`, `kafka.py`, `*_kafka.py`). A pure module is imported in a
   fresh interpreter and no I/O or model library may be in ``sys.modules`` afterwards, so an
   import of an import counts too. The composition root wires adapters and is not checked.
4. bench/ and tools/ use only public entry points: no private name, no test module.
5. The error tree drawn in `kernel.errors` names every error class the project defines.
"""

import ast
import importlib
import inspect
import json
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO

ROOT_PACKAGE = "clinstream"  # the composition root
KERNEL = "kernel"
IO_LIBRARIES = (
    "faststream",
    "aiokafka",
    "confluent_kafka",
    "pymilvus",
    "onnxruntime",
    "tokenizers",
    "httpx",
    "starlette",
    "sqlite3",
    "pyarrow",
    "pydicom",
    "mcp",
)
ADAPTER_ROLES = ("app", "http", "server", "client", "store", "session", "sink", "source", "files", "kafka")


def _top_packages():
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return sorted({p.split(".")[0] for p in packages})


PACKAGES = _top_packages()


def _module_name(path):
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package):
    return sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)


def _unit(module):
    """The stage (or kernel, or composition root) a dotted module name belongs to."""
    top, _, rest = module.partition(".")
    folder = REPO / top
    holds_only_subpackages = not any(p.name != "__init__.py" for p in folder.glob("*.py"))
    if holds_only_subpackages and rest:
        return f"{top}.{rest.split('.')[0]}"
    return top


def _imports(path):
    """First-party modules ``path`` imports, anywhere in it (function-level imports included)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                yield name


def _is_module(parts):
    path = REPO.joinpath(*parts)
    return path.is_dir() or path.with_suffix(".py").is_file()


def _first_party_unit(name):
    """``name``'s unit; for ``from pkg import sub`` the submodule decides, when it is one."""
    parts = name.split(".")
    while parts and not _is_module(parts):
        parts.pop()
    return _unit(".".join(parts)) if parts else None


def _stage_modules():
    for package in PACKAGES:
        if package != KERNEL:
            yield from _modules(package)


def test_the_folder_rules_find_the_stages():
    units = {_unit(_module_name(p)) for p in _stage_modules()}
    assert {"connectors", "stream", "indexer", "inference.cds", "inference.notes", "dashboard"} <= units
    assert "inference" not in {_unit(_module_name(p)) for p in _stage_modules() if p.name != "__init__.py"}


@pytest.mark.parametrize("path", _modules(KERNEL), ids=lambda p: _module_name(p))
def test_the_kernel_imports_only_the_kernel(path):
    outside = sorted({name for name in _imports(path) if name.split(".")[0] != KERNEL})
    assert outside == []


@pytest.mark.parametrize("path", list(_stage_modules()), ids=lambda p: _module_name(p))
def test_a_stage_imports_only_the_kernel_and_itself(path):
    own = _unit(_module_name(path))
    offending = set()
    for name in _imports(path):
        unit = _first_party_unit(name)
        if unit is None or unit in (KERNEL, own):
            continue
        if own == ROOT_PACKAGE and unit != ROOT_PACKAGE:
            continue  # the composition root imports the stages
        if unit.split(".")[0] == own.split(".")[0] and name.count(".") == 0:
            continue  # `import inference` from inside inference: the package, not a sibling stage
        offending.add(name)
    assert sorted(offending) == []


def _is_adapter(path):
    stem = path.stem
    return stem in ADAPTER_ROLES or stem.endswith(tuple(f"_{role}" for role in ADAPTER_ROLES))


PURE = [
    _module_name(p)
    for package in PACKAGES
    if package != ROOT_PACKAGE
    for p in _modules(package)
    if not _is_adapter(p)
]

# Imports each module in a child forked from a clean interpreter: as good as a fresh
# interpreter per module (nothing first-party is loaded before the fork) and much cheaper.
_PROBE = """
import json, os, sys
forbidden, modules = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert not [m for m in forbidden if m in sys.modules]
out = {}
for module in modules:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(module)
            found = [m for m in forbidden if m in sys.modules]
        except BaseException as exc:
            found = ["import failed: " + type(exc).__name__]
        os.write(w, json.dumps(found).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out[module] = json.loads(f.read() or '["child died"]')
    os.waitpid(pid, 0)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def loaded_by_pure_modules():
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(IO_LIBRARIES), json.dumps(PURE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=170,
    )
    return json.loads(done.stdout)


def test_the_naming_rule_finds_pure_modules_and_adapters():
    assert {"stream.normalize", "kernel.events", "inference.notes.drafting"} <= set(PURE)
    assert {"stream.app", "kernel.kafka", "indexer.milvus_store"}.isdisjoint(PURE)


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_load_no_io_or_model_library(module, loaded_by_pure_modules):
    assert loaded_by_pure_modules[module] == []


def test_the_probe_sees_an_io_library_loaded_through_another_module(loaded_by_pure_modules):
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(IO_LIBRARIES), '["kernel.generator_session"]'],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "onnxruntime" in json.loads(done.stdout)["kernel.generator_session"]


@pytest.mark.parametrize("folder", ["bench", "tools"])
def test_bench_and_tools_use_public_entry_points(folder):
    offending = []
    for path in sorted((REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module, names = node.module, [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                module, names = "", [a.name for a in node.names]
            else:
                continue
            for full in [module, *names] if module else names:
                parts = full.split(".")
                if parts[0] == "tests" or (
                    (module.split(".")[0] if module else parts[0]) in PACKAGES
                    and any(p.startswith("_") for p in parts)
                ):
                    offending.append(f"{path.name}: {full}")
    assert offending == []


# Run apart: importing every module (the Streamlit app among them) must not leave state in the
# test process.
_ERROR_CLASSES = """
import importlib, inspect, json, pkgutil, sys
from kernel.errors import ClinstreamError
found = []
for package in json.loads(sys.argv[1]):
    mod = importlib.import_module(package)
    names = [package] + [i.name for i in pkgutil.walk_packages(mod.__path__, package + ".")]
    for name in names:
        if name.endswith("__main__"):
            continue
        mod = importlib.import_module(name)
        for attr, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, ClinstreamError) and obj.__module__ == name:
                if not attr.startswith("_"):
                    found.append([attr, name])
print(json.dumps(found))
"""


def test_the_error_tree_names_every_error_class():
    done = subprocess.run(
        [sys.executable, "-c", _ERROR_CLASSES, json.dumps(PACKAGES)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=170,
    )
    defined = json.loads(done.stdout)
    assert len(defined) > 20
    words = set(inspect.getdoc(importlib.import_module("kernel.errors")).split())
    assert sorted(f"{mod}.{name}" for name, mod in defined if name not in words) == []
    assert sorted(f"{mod}.{name}" for name, mod in defined if mod.rsplit(".", 1)[-1] != "errors") == []


def test_kernel_package_import_is_cheap():
    done = subprocess.run(
        [sys.executable, "-c", "import sys, kernel, stream; print(sorted(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert loaded.isdisjoint(IO_LIBRARIES)
    assert "pydantic" not in loaded
