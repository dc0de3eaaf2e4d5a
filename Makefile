# Set-up, build and test from a fresh checkout. Every target installs what it needs first.
#   make tune    the main job: a 50-trial Optuna study of the MNIST CNN
#   make test    every test: cargo's and pytest's, with the real trainer on real MNIST

PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= ../shared/datasets
TRIALS ?= 50

venv := $(abspath $(VENV))
# libtorch's build script runs `python` from the active environment to find torch.
export VIRTUAL_ENV := $(venv)
export PATH := $(venv)/bin:$(PATH)
export RUST_TRAINER_DATA_DIR := $(abspath $(DATA_DIR))
# The trainer just built from this checkout, not an older installed copy.
export RUST_TRAINER := $(abspath target/release/rust-trainer)

.PHONY: setup build tune test test-rust test-python lint clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Cargo.toml rust_trainer/Cargo.toml rust_trainer/build.rs
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.11.0 'maturin>=1.5,<2'
	$(VENV)/bin/pip install --quiet --no-build-isolation --editable '.[test,postgres]'
	touch $@

# Rebuilds the trainer after a change to its sources (setup builds it once).
build: setup
	$(VENV)/bin/orchestrate build

tune: build
	$(VENV)/bin/orchestrate tune --study mnist-cnn --trials $(TRIALS) --epochs 3 \
		--train-limit 20000 --sampler tpe --pruner successive-halving --seed 0 \
		-- --schedule onecycle
	$(VENV)/bin/orchestrate best --study mnist-cnn

test: test-rust test-python

test-rust: setup
	cargo test --release --workspace

test-python: build
	$(VENV)/bin/pytest -q

lint: setup
	cargo fmt --all -- --check
	cargo clippy --release --all-targets -- -D warnings
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf target $(VENV) runs orchestrate.db
