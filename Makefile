# Two commands do all the set-up: `make run` and `make test`.
# Both (re)install into .venv only when setup.py or constraints.txt changed since the last install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
# Two workers: most of the suite's time is single-threaded graph tracing.
PYTEST_ARGS ?= -n 2

.PHONY: run test bench install clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m pip check
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m binaries.train --dataset=digits --model=cnn --epochs=5 --eps=0.2

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.ntk

clean:
	rm -rf $(VENV) build *.egg-info
