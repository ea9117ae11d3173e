# apgrid: the two set-up commands are `make demo` and `make test` (see README.md).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)  ## run the embedded demo grid into runs/demo
	$(BIN)/apgrid launch --output runs/demo
	$(BIN)/apgrid query runs/demo --where "stage='evaluate'"

test: $(STAMP)  ## fast tests (digits, CPU)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)  ## slow tests too (CIFAR-10 needs ../shared/scripts/fetch-cifar10)
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf runs .pytest_cache
