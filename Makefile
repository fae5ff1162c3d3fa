# The two commands a newcomer runs: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adaray-installed
DEMO_WORK ?= adaray_work

.PHONY: setup demo test lint bench clean

# Torch goes first: `torch==2.13.0` is the CPU build that lies on these machines' disk (elsewhere
# the normal wheel); a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/adaray info
	$(BIN)/adaray demo --workdir $(DEMO_WORK)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/ssd.py
	$(BIN)/python bench/metrics.py
	$(BIN)/python bench/model.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
