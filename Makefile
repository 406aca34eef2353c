# The README's quick start and CI both go through these targets.
# torch is installed first from the pinned CPU wheel: installing the project alone would let
# pip resolve torch>=2.4 to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,hf,interop

.PHONY: setup demo test lint bench mutate clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(BIN)/mono-quant run examples/demo.yaml

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/quantize_speed.py

# Mutation testing of the modules listed in tools/mutate.py; prints the score per module.
# Slow (tens of minutes), so not part of `make test`; see docs/mutation.md.
mutate: setup
	$(BIN)/pip install --quiet -e ".[mutate]"
	$(BIN)/python tools/mutate.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mutate
