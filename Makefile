# Two entry points for a new user: `make demo` and `make test`. Both set up .venv/ first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.contra-installed

.PHONY: setup demo test lint clean-venv

setup: $(STAMP)

# Re-runs only when the declared dependencies or pins change.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/contra demo --config configs/demo.yaml

test: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check --no-cache .

clean-venv:
	rm -rf $(VENV)
