# geoface — the two commands of the quick start, and a few helpers.
#   make repro   create .venv on first use, install, run the whole DVC pipeline
#   make test    create .venv on first use, install, run the test suite
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# `make test` runs the test files on this many processes (pytest-xdist, a file's tests stay together so its
# module-scoped fixtures are built once; --no-loadscope-reorder hands the files out in tests/conftest.py's order,
# slowest first, where xdist would order them by their number of tests); 0 runs them in this process
TEST_WORKERS ?= 2
# stage commands in dvc.yaml call `python`: make it the environment's
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: repro test install lock bench ablations clean-venv

# installs the exact versions of requirements.lock (the ones the tests passed with); `make lock` refreshes it
$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

# pytest exits 5 when it collected no tests: that must fail, not pass silently.
test: $(STAMP)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

# the three ablation variants as `dvc exp run --temp` experiments (after `make repro`), then docs/ablations.md
ablations: $(STAMP)
	$(BIN)/python -m geoface_model.ablations run
	$(BIN)/python -m geoface_model.ablations table

# resolve pyproject.toml afresh in a throw-away environment and write the exact versions to requirements.lock;
# then run `make test` (docs/environment.md)
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]'
	{ echo "# Exact versions \`make test\` passed with (Python 3.11, Linux x86_64). \`make install\` installs with"; \
	  echo "# \`pip install -c requirements.lock\`. Refresh after changing pyproject.toml: \`make lock\` (docs/environment.md)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v '^\(pip\|setuptools\|wheel\)=='; } > requirements.lock
	rm -rf .venv-lock

bench: $(STAMP)
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-venv:
	rm -rf $(VENV)
