# Everything installs from this project's own files into .venv: exactly the versions in uv.lock,
# from PyPI. Nothing is downloaded at run time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# uv from PATH when there is one; otherwise pip bootstraps it into the venv, at the version the
# lock names (uv is a dev dependency, so `uv sync` keeps it there afterwards).
UV := $(or $(shell command -v uv 2>/dev/null),$(BIN)/uv)
# Install into .venv even when another environment is active, and never fetch a Python.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# Python keeps compiled bytecode (__pycache__) even where the environment says not to
# (PYTHONDONTWRITEBYTECODE=1 is set on the development VM): `make test` starts about a hundred
# Python processes, and without the cache each one compiled every module it imported again
# (`python -c "import worker"`: 1.1 s of CPU, 0.65 s with the cache; docs/testing.md).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install lock run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$$($(BIN)/python -c \
	  "import tomllib; print(next(p['version'] for p in tomllib.load(open('uv.lock', 'rb'))['package'] if p['name'] == 'uv'))")"

# --locked: a uv.lock out of step with pyproject.toml stops the install instead of being
# re-resolved on the fly; run `make lock` after editing dependencies and commit both files.
$(STAMP): pyproject.toml uv.lock | $(BIN)/python $(UV)
	$(UV) sync --locked --extra dev --quiet \
	  || { echo "make: if uv.lock needs to be updated: run 'make lock' and commit uv.lock" >&2; exit 1; }
	touch $(STAMP)

install: $(STAMP)

# Re-resolve uv.lock after editing dependencies in pyproject.toml (keeps unrelated pins as they are).
lock: | $(BIN)/python $(UV)
	$(UV) lock

run: $(STAMP)
	$(BIN)/python -m local_stack

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

# Tests run on one worker more than there are cores (pytest-xdist): much of a test's time is
# spent waiting on servers, subprocesses and timeouts, and a third worker uses the CPU the
# other two leave idle (2-core VM, idle: 109-119 s with two workers, 87-90 s with three;
# docs/testing.md). PYTEST_WORKERS=0 runs them in this one process.
# loadgroup: tests that share a module's fixture, or carry one xdist_group, run on one worker
# (tests/conftest.py); the rest go out longest first (@pytest.mark.duration), then in collection
# order (no reorder): the long integration tests start first, the short ones fill in at the end.
PYTEST_WORKERS ?= $(shell echo $$(( $$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1) + 1 )))
PYTEST_PARALLEL := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
