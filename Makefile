# Two commands do all the set-up: `make run` and `make test`.
# Both (re)install into .venv only when setup.py, constraints.txt or pyproject.toml changed since the last install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
# Two workers: most of the suite's time is single-threaded graph tracing.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: run test bench docs install clean build-file

install: $(STAMP)

$(STAMP): setup.py constraints.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,docs,ray]"
	$(PY) -m pip check
	@touch $(STAMP)

# `make run`: the reproduction study's quick preset on the bundled digits, offline (~7 min on 2 cores):
# 3 seeds of standard and adversarial training, centered phase 2 from their spawns, kernel dynamics
# and seed-to-seed baselines, strong evaluations; ends with the claims table and where the report,
# figures and TensorBoard logs are. A second `make run` only rewrites the report (finished jobs are
# skipped); `make run RUN_ARGS=--overwrite` starts over.
RUN_DIR ?= runs/reproduce-quick
RUN_ARGS ?=

run: $(STAMP)
	$(PY) -m binaries.reproduce --preset=quick --workdir=$(RUN_DIR) $(RUN_ARGS)

# `make test`: lint (ruff), type-check (mypy: the exported surface fully annotated; both configured
# in pyproject.toml), then the suite.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.ntk

# `make docs`: the API reference of the public API (what tf_ntk/__init__.py exports), generated from
# the docstrings by pdoc into docs/api/ (open docs/api/index.html). Any warning fails the build
# (-W error); tf_ntk.cli is imported first to mute TensorFlow's C++ start-up logs.
DOCS_DIR ?= docs/api

docs: $(STAMP)
	rm -rf $(DOCS_DIR)
	$(PY) -W error -c "from tf_ntk.cli import quiet; import runpy, sys; sys.argv[0] = 'pdoc'; \
	  runpy.run_module('pdoc', run_name='__main__')" --docformat google --output-directory $(DOCS_DIR) tf_ntk
	@echo "API reference: $(DOCS_DIR)/index.html"

# `make build-file`: rewrite BUILD (Bazel targets) from the imports; run it after adding, moving or
# re-importing a module (tests/test_build.py fails on a stale BUILD).
build-file:
	$(PYTHON) -m tools.build_file

clean:
	rm -rf $(VENV) build *.egg-info $(DOCS_DIR)
