# distillkit developer commands. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
ARGS ?=
# the lowest hydra-core pyproject.toml allows: the safety tests run on it too
HYDRA_FLOOR := $(shell sed -n 's/.*"hydra-core>=\([0-9.]*\),.*/\1/p' pyproject.toml)
FLOOR_DIR := .hydra-floor

.DEFAULT_GOAL := help
.PHONY: help setup run test test-fast test-safety-floor lint fetch bench bench-tiny clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install distillkit with its dev tools

run: $(STAMP)  ## run the default distillation (extra Hydra overrides: make run ARGS="loss=kl")
	$(BIN)/python -m distillkit $(ARGS)

test: $(STAMP)  ## run the whole test suite (incl. real-asset and CLI end-to-end tests)
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)  ## run the tests without real assets and CLI subprocess runs
	$(BIN)/python -m pytest -q -m "not assets and not e2e" $(ARGS)

test-safety-floor: $(STAMP)  ## the safety tests again on the lowest hydra-core allowed (no Hydra blocklist)
	rm -rf $(FLOOR_DIR)
	$(BIN)/python -m pip install --quiet --no-deps --target $(FLOOR_DIR) hydra-core==$(HYDRA_FLOOR)
	PYTHONPATH=$(CURDIR)/$(FLOOR_DIR) $(BIN)/python -c \
		"import hydra; assert hydra.__version__ == '$(HYDRA_FLOOR)', hydra.__version__"
	PYTHONPATH=$(CURDIR)/$(FLOOR_DIR):$(CURDIR)/src $(BIN)/python -m pytest -q tests/test_safety*.py $(ARGS)

lint: $(STAMP)  ## ruff lint of sources and tests
	$(BIN)/ruff check src tests bench

fetch: $(STAMP)  ## download the offline teacher and SNLI data into the cache (DISTILLKIT_CACHE)
	$(BIN)/distillkit fetch $(ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)  ## real-model speed (bench/speed.py --real; ARGS="--markdown") + causal KD loss memory
	$(BIN)/python bench/speed.py --real $(ARGS)
	$(BIN)/python bench/token_loss_memory.py --chunks 256 --markdown

bench-tiny: $(BENCH_STAMP)  ## the same benchmark on tiny models (seconds)
	$(BIN)/python bench/speed.py $(ARGS)

clean:  ## remove the virtualenv and caches (keeps outputs/)
	rm -rf $(VENV) $(FLOOR_DIR) .pytest_cache .ruff_cache build dist
