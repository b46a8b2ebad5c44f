# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs raysuite into it when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/raysuite sweep sweeps/quickstart.yaml

test: $(STAMP)
	$(BIN)/ruff check raysuite tests benchmarks examples
	$(BIN)/pyright
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check raysuite tests benchmarks examples
	$(BIN)/pyright

clean:
	rm -rf $(VENV) mlflow.db ray_results .pytest_cache
