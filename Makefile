# Two commands on a fresh machine:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# torch comes first, from PyTorch's own wheel index for the chosen build, so pip never
# pulls PyPI's default torch (the CUDA 13 build plus ~2.7 GB of nvidia packages) on a
# CPU machine. TORCH_INDEX picks the build: .../whl/cpu (default), .../whl/cu126
# (CUDA 12.6 drivers), .../whl/cu130, or TORCH_INDEX= (empty: PyPI's own build). An
# unreachable index costs seconds, not minutes (short timeout, one retry): pip then
# goes on with the other sources it is configured with (a local wheel folder here).
TORCH       ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_FROM  := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --timeout 15 --retries 1,)

.PHONY: serve test install install-test bench-quality bench-codecs bench-service clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Serving only: torch, then the service and its runtime dependencies.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_FROM) --only-binary torch "$(TORCH)"
	$(BIN)/pip install -q -e .
	touch $@

# Tests and benchmarks: the reference packages, a model, the client with its CLI extra.
$(VENV)/.installed-test: $(VENV)/.installed client/pyproject.toml
	$(BIN)/pip install -q -e ".[test,bench]" -e "./client[cli]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

serve: install
	EMBQUANT_HOST=$(HOST) EMBQUANT_PORT=$(PORT) $(BIN)/embquant serve

test: install-test
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench-quality: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python bench/quality.py

# In-process encode/decode speed of every codec beside faiss and a copy: docs/throughput.md, .png
bench-codecs: install-test
	$(BIN)/python bench/codecs.py

# Issue 8's service measurements through two local servers (batching on and off), the real
# client and wrk (Debian's `wrk`; its rows are skipped without it): docs/service.md, .png.
# About 15-20 minutes; `$(BIN)/python bench/service.py --quick` (< 2 min) writes /tmp/svcbench/.
bench-service: install-test
	$(BIN)/python bench/service.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info service/*.egg-info client/*.egg-info

# Issue 12's LanceDB example (examples/lancedb/README.md): the same data and service as the
# Postgres one, an embedded LanceDB (a temporary directory) as the store.
.PHONY: example-lancedb
example-lancedb: install-test
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python examples/lancedb/example.py $(ARGS)

# Issue 12's Postgres example (examples/postgres/README.md): a throwaway PostgreSQL from
# Debian's `postgresql` package (installed here if missing) in a temp directory, an embquant
# service, 100,000 real MiniLM vectors; ARGS="--docs 20000" for a shorter run.
.PHONY: example-postgres
example-postgres: install-test
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python examples/postgres/example.py $(ARGS)
