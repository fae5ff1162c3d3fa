# The two commands a newcomer runs: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.adaray-installed
DEMO_WORK ?= adaray_work

.PHONY: setup demo test lint bench clean

# Torch goes first, with torchvision (the detector of `adaray downstream`): this pair lies on
# these machines' disk, so pip takes it from there (about 40 s; the CUDA build, 5.5 GB in the
# venv, which runs on CPU as fast as the CPU build). PyPI's torchvision does not import beside
# the smaller CPU-only torch 2.13.0 ("operator torchvision::nms does not exist"), and a bare
# `torch` requirement would download a multi-GB build instead.
TORCH := torch==2.14.1 torchvision==0.29.1
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/python -m pip install $(TORCH)
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
