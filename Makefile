# apgrid: the two set-up commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c  # a benchmark that fails fails `make bench`, despite its `| tee`

.PHONY: demo test check lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the embedded demo grid into runs/demo
	$(BIN)/apgrid launch --output runs/demo
	$(BIN)/apgrid query runs/demo --where "stage='evaluate'"

test: $(STAMP)  ## every test (digits, CPU): what .ci/run runs
	$(BIN)/python -m pytest -q

check: $(STAMP)  ## the developer's loop: lint, unit tests and one small end-to-end grid (< 4 min)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)  ## ruff: lint and formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)  ## issue 6's benchmarks in one run (~2 h on 2 cores; needs data/cifar10), into runs/bench
	mkdir -p runs/bench
	# the two grids' trained models (skipped when done); the benchmarks evaluate them themselves
	$(BIN)/apgrid launch grid/examples/cifar10-cpu.yaml --until prune
	$(BIN)/apgrid launch --output runs/demo --until prune
	$(BIN)/python benchmarks/evaluation.py --grid runs/cifar10-cpu --block-size 100 \
		--scale-samples 400 --batch-sizes 100 50 25 | tee runs/bench/evaluation.txt
	$(BIN)/python benchmarks/orchestration.py runs/cifar10-cpu --samples 250 --aa-samples 250 \
		--block-size 250 --no-ideal | tee runs/bench/orchestration-cifar10.txt
	$(BIN)/python benchmarks/orchestration.py runs/demo --samples 120 \
		| tee runs/bench/orchestration-demo.txt
	$(BIN)/python benchmarks/evaluation.py --dataset cifar10 --root data/cifar10 --arch resnet18 \
		--train-samples 5000 --epochs 3 --eps 0.0314 --samples 50 --threads 2 --project \
		--skip scale wrapper batch | tee runs/bench/profile-resnet18.txt

clean:
	rm -rf runs .pytest_cache
