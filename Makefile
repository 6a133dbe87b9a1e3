# digitsjax — the two commands are `make train` and `make test`.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PIPELINE ?= pipelines/mnist_mlp.toml
ARGS     ?=
# Genuine MNIST for air-gapped hosts: $DIGITSJAX_MNIST_DIR, else ../shared/data/mnist if present.
export DIGITSJAX_MNIST_DIR ?= $(wildcard $(abspath ../shared/data/mnist))

.PHONY: install train test lint bench cold-start clean
.DEFAULT_GOAL := train

# Exact versions from constraints.txt: fingerprints are bitwise only on identical versions.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/.installed

train: install
	$(BIN)/digitsjax train $(PIPELINE) $(ARGS)

test: install
	$(BIN)/python -m pytest -q $(ARGS)

lint: install
	$(BIN)/ruff check digitsjax tests bench

# Not part of `make test`: ~5-10 minutes, needs the [bench] extra (PyTorch CPU, Keras 3).
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

bench: $(BIN)/.bench-installed
	$(BIN)/python bench/run.py $(ARGS)

cold-start: install
	$(BIN)/python bench/cold_start.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
