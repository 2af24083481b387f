# Two entry points: `make demo` and `make test`. Both create .venv and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
ROWS ?= 200000
OUT ?= out/demo

.PHONY: demo test lint mutation hand-mutations install install-dev bench credit-data clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installed once per change of pyproject.toml (stamp files), not on every run; pip's
# output is shown without setuptools' editable-install banner.
FILTER_PIP = grep -v "BuildBackendWarning\\|Editable install\\|^  *[!*]\\|careful with folders\\|name as your package\\|precedence during\\|wheel_obj:\\|^ *$$" $(VENV)/pip.log || true
install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@$(BIN)/pip install --quiet -e . > $(VENV)/pip.log 2>&1; status=$$?; \
	  $(FILTER_PIP); exit $$status
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	@$(BIN)/pip install --quiet -e '.[dev]' > $(VENV)/pip.log 2>&1; status=$$?; \
	  $(FILTER_PIP); exit $$status
	touch $@ $(VENV)/.installed

demo: install
	$(BIN)/referral-router demo --rows $(ROWS) --out $(OUT)

# Lint, format check and type check first (seconds), then the suite.
lint: install-dev
	$(BIN)/ruff check router tests bench examples models tools
	$(BIN)/ruff format --check router tests bench examples models tools
	$(BIN)/mypy

test: lint
	REQUIRE_POSTGRES=1 $(BIN)/python tests/run_tests.py $(BIN)/python -m pytest -q $(PYTEST_ARGS)
	# The compiled walk as plain Python (numba off) against the reference decider, the store
	# contract and the Python walk, under coverage: its every line must be reached (>= 95 %).
	NUMBA_DISABLE_JIT=1 $(BIN)/coverage run --data-file=.venv/.coverage-nojit --source=router \
	  -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -k array \
	  tests/decide/test_reference.py tests/decide/test_array_store.py \
	  tests/store/test_store_contract.py tests/store/test_late_events.py tests/store/test_int_table.py
	$(BIN)/coverage report --data-file=.venv/.coverage-nojit --fail-under=95 \
	  --include='*/walk_compiled.py,*/store/kernel.py,*/store/int_table.py,*/allocate_compiled.py'
	# The load-test harness as a smoke test (about a minute): every scenario runs and writes
	# its JSON (http needs wrk: installed from Debian's packages when missing and root).
	$(BIN)/python -m bench all --quick --results out/bench/results

# Mutation testing of the economics formulas and the memory store's reservation path
# (about 15 minutes on two cores; writes mutants/).
mutation: install-dev
	$(BIN)/mutmut run "router.core.economics.*" "router.store.memory.*"
	$(BIN)/mutmut results | grep -v "not checked" || true

# One-line mutations of every fast path, each run against the reference decider (about
# 3 minutes; needs redis-server, as make test does).
hand-mutations: install-dev
	$(BIN)/python tools/hand_mutations.py

bench: install-dev
	$(BIN)/python -m bench all
	$(BIN)/python bench/bench_decide.py
	$(BIN)/python bench/bench_cold.py
	$(BIN)/python bench/bench_billing.py

credit-data: install-dev
	$(BIN)/python examples/credit_data.py out/credit_data

clean:
	rm -rf out .pytest_cache build *.egg-info
