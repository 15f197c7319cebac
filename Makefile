# One command each: `make train` (the default run) and `make test` (the whole suite, as CI runs it).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed before the project so that pip keeps it: a bare `torch` requirement would fetch the
# newest build, which on Linux is a multi-GB CUDA one. Override for a GPU machine, e.g.
# `make train TORCH_REQUIREMENT=torch`.
TORCH_REQUIREMENT ?= torch==2.13.0
CONFIG ?= finetune_pipeline/configs/train_config.json

.PHONY: train test data install bench

train: $(VENV)/.installed data
	$(BIN)/python finetune_pipeline/scripts/train.py --config $(CONFIG)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

data: $(VENV)/.installed
	$(BIN)/finetune prepare-data

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH_REQUIREMENT)"
	$(BIN)/python -m pip install --quiet --editable .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --editable ".[test]"
	touch $@

# The speed and memory comparison with transformers.Trainer (prints a table; see benchmarks/README.md).
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_vs_trainer.py --report benchmarks/latest.md

$(VENV)/.installed-bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet --editable ".[bench]"
	touch $@
