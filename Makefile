# weighted_mtp — every target creates .venv when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed

.PHONY: install bwrap test test-slurm lint format setup demo experiment bench-decode bench-sandbox seed-configs docs docs-serve clean

install: bwrap $(STAMP)

# bubblewrap: the sandbox of `evaluate` and `prepare synthetic` (docs/evaluation.md: Security model).
# Installed with apt when missing (as root, or with passwordless sudo); otherwise says how.
bwrap:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "bwrap is missing: install bubblewrap (docs/evaluation.md: Security model)" >&2; exit 0; fi; \
	  if ! command -v apt-get >/dev/null; then \
	    echo "bwrap is missing: install bubblewrap (docs/evaluation.md: Security model)" >&2; exit 0; fi; \
	  $$sudo apt-get update -qq && \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# pytest-xdist: TEST_JOBS worker processes, a test file's tests on one worker (its module
# fixtures built once), files handed out in collection order (tests/integration's long ones
# first, not xdist's fewest-tests-last order); the micro assets are built once for all.
# TEST_JOBS=0: one process.
TEST_JOBS ?= 2
test: bwrap $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder

test-slurm: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

setup: $(STAMP)
	$(BIN)/python -m weighted_mtp setup

# setup + train critic -> verifiable, baseline, rho1 + pass@k on test.jsonl + table/plot
demo: $(STAMP)
	$(BIN)/python -m weighted_mtp.demo

# every row (4 stages, 2 controls, the pretrained policy) x 3 seeds on the embedded default,
# greedy evaluations also decoding self-speculatively (3 drafts), then `compare` (bootstrap
# 95% intervals, weighting effects); EXPERIMENT_ARGS passes demo options, e.g.
# EXPERIMENT_ARGS="--epochs 1 --limit 30" or "--override training.advantage_norm=step".
EXPERIMENT ?= storage/experiment/$(shell date +%Y-%m-%d_%H-%M-%S)
EXPERIMENT_ARGS ?=
experiment: $(STAMP)
	$(BIN)/python -m weighted_mtp.demo --seeds 0 1 2 --speculative-drafts 3 --out $(EXPERIMENT) \
	  $(EXPERIMENT_ARGS)

bench-decode: $(STAMP) ; $(BIN)/python benchmarks/decode.py

bench-sandbox: bwrap $(STAMP) ; $(BIN)/python benchmarks/sandbox.py

# Write the seed's 8 flat config files (configs/<stage>/<stage>[_local].yaml) from conf/.
seed-configs: $(STAMP)
	for s in baseline critic verifiable rho1; do \
	  mkdir -p configs/$$s; \
	  $(BIN)/wmtp stage=$$s profile=vessl --cfg job > configs/$$s/$$s.yaml; \
	  $(BIN)/wmtp stage=$$s profile=local --cfg job > configs/$$s/$${s}_local.yaml; \
	done

# The docs site (MkDocs Material, docs/ + mkdocs.yml): the config field and CLI references are
# generated from the code at build time (docs/_hooks/reference.py). docs: a strict build into
# site/ (a broken link, anchor or page fails); docs-serve: live preview on 127.0.0.1:8000.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	$(BIN)/mkdocs serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
