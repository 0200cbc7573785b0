# Two commands on a fresh machine:  `make serve`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# The CPU build of torch; pinned so pip never pulls the multi-GB CUDA build here.
TORCH  ?= torch==2.13.0

.PHONY: serve test install bench-quality bench-codecs bench-service clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml client/pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test,bench]" -e ./client
	touch $@

install: $(VENV)/.installed

serve: install
	EMBQUANT_HOST=$(HOST) EMBQUANT_PORT=$(PORT) $(BIN)/embquant serve

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench-quality: install
	HF_HUB_OFFLINE=1 $(BIN)/python bench/quality.py

# In-process encode/decode speed of every codec beside faiss and a copy: docs/throughput.md, .png
bench-codecs: install
	$(BIN)/python bench/codecs.py

# Issue 8's service measurements through two local servers (batching on and off), the real
# client and wrk (Debian's `wrk`; its rows are skipped without it): docs/service.md, .png.
# About 15-20 minutes; `$(BIN)/python bench/service.py --quick` (< 2 min) writes /tmp/svcbench/.
bench-service: install
	$(BIN)/python bench/service.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info service/*.egg-info client/*.egg-info

# Issue 12's Postgres example (examples/postgres/README.md): a throwaway PostgreSQL from
# Debian's `postgresql` package (installed here if missing) in a temp directory, an embquant
# service, 100,000 real MiniLM vectors; ARGS="--docs 20000" for a shorter run.
.PHONY: example-postgres
example-postgres: install
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; }
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python examples/postgres/example.py $(ARGS)
