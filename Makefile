# make setup | make demo | make demo-chat | make demo-sql | make chat | make export | make llama-cpp | make test | make test-fast   (a fresh machine needs python3.11, PyPI, and Debian packages for the report test's chromium)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup demo demo-chat demo-sql test test-fast chromium chat export llama-cpp

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.txt requirements-dev.txt constraints.txt requirements-nodeps.txt requirements-converter.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install -q --no-deps -e .
	rm -rf $(VENV)/converter
	$(BIN)/pip install -q --no-deps --target $(VENV)/converter -r requirements-converter.txt
	touch $@

demo: setup
	$(BIN)/python part1_instruction_finetuning.py
	$(BIN)/python part1b_preference_tuning.py
	$(BIN)/python part2_generate_test_responses.py
	$(BIN)/python part3_benchmark_evaluation.py
	$(BIN)/python part4_local_evaluation.py

# The same stages on the default records as conversations, in ChatML (docs/conversations.md), in outputs-chat/
CHAT_RUN = --output-dir outputs-chat
demo-chat: setup
	$(BIN)/python part1_instruction_finetuning.py $(CHAT_RUN) --prompt-style chatml --data instructkit/data/default/conversation-data.json
	$(BIN)/python part2_generate_test_responses.py $(CHAT_RUN)
	$(BIN)/python part3_benchmark_evaluation.py $(CHAT_RUN)
	$(BIN)/python part4_local_evaluation.py $(CHAT_RUN)

# Text-to-SQL offline (docs/domain-metrics.md): the shop database's questions, execution accuracy
# base vs finetuned with McNemar, in outputs-sql/
SQL_RUN = --output-dir outputs-sql
demo-sql: setup
	$(BIN)/python part1_instruction_finetuning.py $(SQL_RUN) --data instructkit/data/default/sql-data.json --test-fraction 0.2
	$(BIN)/python part2_generate_test_responses.py $(SQL_RUN) --max-new-tokens 96
	$(BIN)/python part4_local_evaluation.py $(SQL_RUN) --judge none --metric sql-execution --metric sql-exact-set-match

# Stage 6, after stages 1-2 (make demo): merged model, GGUF files, Modelfile, model card and parity in outputs/export/
export: setup
	$(BIN)/python part6_export.py

# llama.cpp for stage 6 (the GGUF answering through llama.cpp, --serve): built from source, about
# 6 minutes on 2 cores, once per environment. For AVX2, not -march=native: on CPUs with AMX (Intel
# Sapphire Rapids and later) the native build's AMX kernels crash on q8_0 files (llama.cpp #20824,
# seen here: a segfault in libggml-cpu); not from pip's wheel cache, which ignores CMAKE_ARGS.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
llama-cpp: $(VENV)/.llama-cpp

$(VENV)/.llama-cpp: $(VENV)/.installed requirements-llama.txt
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --no-cache-dir -q -r requirements-llama.txt -c constraints.txt
	touch $@

# Stage 5, after stage 1: the chat app on http://127.0.0.1:7860/
chat: setup
	$(BIN)/python part5_chat_app.py

# The report test opens report.html in headless Chromium (Debian's package).
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium)

test: setup chromium llama-cpp
	$(BIN)/python -m pytest -q

# The inner loop: the tests marked fast (no model loads, no servers, no subprocess runs of the stages).
test-fast: setup
	$(BIN)/python -m pytest -q -m fast
