# The two commands a user needs (see README.md):
#   make demo   set up, then serve the bundled demo models
#   make test   set up, then run lint, types and the whole test suite
# Set-up installs torch through constraints.txt (exactly torch==2.13.0: the CPU wheel where the
# machine's pip finds it locally, as on our build and CI machines; PyPI's own is the CUDA build,
# see the README); the package itself asks only for a torch range.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench setup clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,test]'
	# TF Serving's official Python client, for the drop-in tests: --no-deps, because it asks for
	# the full `tensorflow` (CUDA) package; tensorflow-cpu of the same version provides it.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps 'tensorflow-serving-api==2.21.0'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/modelyard serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# Two phases (tests/conftest.py): everything but the tests that assert on real time, in two
# processes (pytest-xdist); then those alone, one at a time.
test: lint typecheck
	$(BIN)/pytest -q --durations=25 -n 2 --dist loadgroup -m "not serial"
	$(BIN)/pytest -q --durations=10 -m serial

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build src/*.egg-info
