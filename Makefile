# Every target sets itself up on a fresh machine: a venv in .venv, the project installed editable
# with its test extras, re-installed only when pyproject.toml changes (stamp file).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := test
.PHONY: install demo test lint up down status

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/billing-recon demo

test: $(STAMP)
	$(BIN)/pytest -q
	$(BIN)/ruff check .
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

up: $(STAMP)
	$(BIN)/billing-recon dev up

down: $(STAMP)
	$(BIN)/billing-recon dev down

status: $(STAMP)
	$(BIN)/billing-recon dev status
