# The README's quick start and CI both go through these targets.
# torch is installed first from the pinned CPU wheel: installing the project alone would let
# pip resolve torch>=2.4 to a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# torchvision (the 'vision' extra) must match torch exactly (0.28.0 requires torch==2.13.0;
# a newer one would pull a CUDA torch 2.14). PyPI's torchvision is a CUDA build whose C ops do
# not load over the CPU torch wheel, and once in the venv its failing import breaks
# transformers' imports too. So it is installed apart, with --no-deps, in $(VENV)/vision,
# which only the tests' torchvision models add to their path (tests/pipeline/archs.py). With a
# CUDA torch (or the CPU torchvision from the PyTorch index) install the extra instead:
# pip install "mono-quant[vision]" in the same command as torch.
TORCHVISION_SPEC ?= torchvision==0.28.0
EXTRAS ?= dev,hf,interop,web,s3,gcs,azure,fast

.PHONY: setup demo test test-slow lint layers bench mutate clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/vision --upgrade $(TORCHVISION_SPEC) pillow
	touch $@

demo: setup
	$(BIN)/mono-quant run examples/demo.yaml

lint: setup
	$(BIN)/ruff check .
	$(MAKE) layers

# import-linter reads packages from the file system, and worker/ and scheduler/ install under
# mono_quant only through setuptools' package-dir mapping: check a copy laid out as installed.
layers: setup
	rm -rf build/layers && mkdir -p build/layers
	cp -r src/mono_quant build/layers/mono_quant
	cp -r worker build/layers/mono_quant/worker
	cp -r scheduler build/layers/mono_quant/scheduler
	cd build/layers && PYTHONPATH=. ../../$(BIN)/lint-imports ../../pyproject.toml

# `make test`: lint, then every test not marked slow (minutes); `make test-slow`: the slow
# ones (architecture matrix, 100k-job submits, end-to-end queue faults). CI runs both.
test: lint
	$(BIN)/python -m pytest -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -m slow

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
