# digitsjax — the two commands are `make train` and `make test`.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
PIPELINE ?= pipelines/mnist_mlp.toml
ARGS     ?=
# The jax build: cpu, cuda (CUDA 13, NVIDIA driver >= 580), cuda12 (older drivers) or tpu.
# `make install ACCEL=cuda` remembers it, so later `make train` / `make test` keep that build.
ACCELS   := cpu cuda cuda12 tpu
ACCEL    ?= $(or $(shell cat $(VENV)/.accel 2>/dev/null),cpu)
ifeq ($(filter $(ACCELS),$(ACCEL)),)
$(error ACCEL=$(ACCEL) is not a jax build digitsjax installs: use one of $(ACCELS))
endif
comma    := ,
# `make train` installs what a run needs (and the accelerator's jax build); `make test` and
# `make lint` add the `dev` extra, `make bench` the `bench` extra.
ACCEL_EXTRA := $(filter-out cpu,$(ACCEL))
with_extras = '.[$(1)$(if $(ACCEL_EXTRA),$(comma)$(ACCEL_EXTRA))]'
RUNTIME  := $(if $(ACCEL_EXTRA),'.[$(ACCEL_EXTRA)]',.)
# Genuine MNIST for air-gapped hosts: $DIGITSJAX_MNIST_DIR, else ../shared/data/mnist if present.
export DIGITSJAX_MNIST_DIR ?= $(wildcard $(abspath ../shared/data/mnist))

.PHONY: install install-dev train test lint bench bench-sweeps reproduce cold-start clean
.DEFAULT_GOAL := train

# Exact versions from constraints.txt: fingerprints are bitwise only on identical versions.
# The accelerator builds are jax's own extras at that same pinned version.
$(BIN)/.installed-$(ACCEL): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e $(RUNTIME)
	echo $(ACCEL) > $(VENV)/.accel
	touch $@

install: $(BIN)/.installed-$(ACCEL)

$(BIN)/.dev-installed-$(ACCEL): $(BIN)/.installed-$(ACCEL)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e $(call with_extras,dev)
	touch $@

install-dev: $(BIN)/.dev-installed-$(ACCEL)

train: install
	$(BIN)/digitsjax train $(PIPELINE) $(ARGS)

# Test files run on one more process than there are cores (at most 8); a file's tests stay on
# one process, so its module fixtures are built once. TEST_WORKERS=0 runs them in this one.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(8, (os.cpu_count() or 1) + 1))")

test: install-dev
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

lint: install-dev
	$(BIN)/ruff check digitsjax tests bench

# Not part of `make test`: ~5-10 minutes, needs the [bench] extra (PyTorch CPU, Keras 3).
$(BIN)/.bench-installed: $(BIN)/.dev-installed-$(ACCEL)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e $(call with_extras,dev$(comma)bench)
	touch $@

bench: $(BIN)/.bench-installed
	$(BIN)/python bench/run.py $(ARGS)

# lr_sweep's 32 points searched as a grid and by successive halving, side by side (about 5
# minutes); then a grid as one program against K seeds and separate runs, every way a whole
# digitsjax process, and split over simulated CPU devices: Nielsen's 8 rates, about 3 minutes
# (ARGS="--devices 2,4,8" for more device counts); ARGS="--long" adds lr_sweep's 32 points
# (about 10 more).
bench-sweeps: install
	$(BIN)/python bench/search_cost.py
	$(BIN)/python bench/sweep_cost.py $(ARGS)

# Not part of `make test`: the paper pipelines and mnist_best, about an hour on 2 CPU cores
# (ARGS="--all" adds the accelerator-sized ones; ARGS="simard2003" runs one).
reproduce: install
	$(BIN)/python bench/reproduce.py $(ARGS)

cold-start: install
	$(BIN)/python bench/cold_start.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
