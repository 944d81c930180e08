# make setup | make demo | make test   (a fresh machine needs only python3.11 and network to PyPI)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt constraints.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	touch $@

demo: setup
	$(BIN)/python part1_instruction_finetuning.py
	$(BIN)/python part2_generate_test_responses.py
	$(BIN)/python part3_benchmark_evaluation.py

test: setup
	$(BIN)/python -m pytest -q
