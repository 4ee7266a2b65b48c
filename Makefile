# The two commands a newcomer needs: `make run` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench migrate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,all]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/svc up

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	bash tests/browser/ensure_chromium.sh
	bash tests/ensure_promtool.sh
	$(BIN)/python -m tests.environment $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

migrate: $(STAMP)
	$(BIN)/svc migrate

bench: $(STAMP)
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/claim.py
	$(BIN)/python bench/beat.py

clean:
	rm -rf $(VENV) var .pytest_cache
