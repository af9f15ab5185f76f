# Two entry points (see README): `make run` and `make test`. Both create .venv and install the
# pinned set from constraints.txt first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORKDIR ?= runs/default

.PHONY: setup run test test-slow bench lint clean

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/python experiments/main.py --config=experiments/configs/default.py --workdir=$(WORKDIR)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

test-slow: setup
	$(BIN)/python -m pytest -q -m slow tests

clean:
	rm -rf $(VENV) *.egg-info
