# flagtrail — the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-embedded fuzz lint bench services-up services-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

## demo: venv + install, then the whole pipeline on the embedded default in ./demo
demo: $(STAMP)
	$(BIN)/flagtrail demo --dir demo

## test: the whole suite; starts a local PostgreSQL and Kafka (deploy/local/up) first
test: $(STAMP)
	bash deploy/local/test

## test-embedded: only the tests that need no server
test-embedded: $(STAMP)
	$(BIN)/pytest -m "not integration"

## fuzz: coverage-guided fuzzing (atheris), 10 minutes in all; inputs found are kept
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz.run --seconds $(FUZZ_SECONDS) --corpus fuzz-artifacts/corpus

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## bench: benchmarks; figures go to bench/results.md
bench: $(STAMP)
	bash bench/run

services-up:
	bash deploy/local/up

services-down:
	bash deploy/local/down

clean:
	rm -rf $(VENV) demo .pytest_cache bench/work
