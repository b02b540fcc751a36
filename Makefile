# Two commands do all the set-up: `make run` and `make test`.
# Both (re)install into .venv only when setup.py or constraints.txt changed since the last install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
# Two workers: most of the suite's time is single-threaded graph tracing.
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: run test bench install clean

install: $(STAMP)

$(STAMP): setup.py constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m pip check
	@touch $(STAMP)

# `make run`: a short form of the README walkthrough on the bundled digits, offline (~5 min on 2 cores):
# train, kernel dynamics, then the protocol and strong robust evaluation of each final checkpoint.
RUN_DIR ?= runs/quickstart
DIGITS := --dataset=digits --model=cnn --eps=0.2 --eval_every=0 --overwrite

run: $(STAMP)
	$(PY) -m binaries.train --workdir=$(RUN_DIR)/standard --epochs=4 --kernel_every=1 --per_class=10 $(DIGITS)
	$(PY) -m binaries.train --workdir=$(RUN_DIR)/adversarial --data_mode=adv --attack_steps=10 --epochs=4 --kernel_every=1 --per_class=10 $(DIGITS)
	$(PY) -m binaries.train --workdir=$(RUN_DIR)/centered-from-adversarial --spawn=$(RUN_DIR)/adversarial/spawn/epoch_1 --dynamics=centered --epochs=3 --save_epochs=0,3 $(DIGITS)
	$(PY) -m binaries.train --workdir=$(RUN_DIR)/centered-from-standard --spawn=$(RUN_DIR)/standard/spawn/epoch_1 --dynamics=centered --epochs=3 --save_epochs=0,3 $(DIGITS)
	$(PY) -m binaries.kernel_dynamics --run=$(RUN_DIR)/standard --compare_run=$(RUN_DIR)/adversarial --per_class=10 --workdir=$(RUN_DIR)/kernel_dynamics
	@for run in standard/spawn/epoch_4 adversarial/spawn/epoch_4 centered-from-adversarial/spawn/epoch_3 centered-from-standard/spawn/epoch_3; do \
	  $(PY) -m binaries.evaluate --checkpoint=$(RUN_DIR)/$$run --eps=0.2 --attack=protocol,strong --overwrite || exit 1; done
	@echo
	$(PY) -m binaries.results --root=$(RUN_DIR)
	@echo
	@echo "TensorBoard:  $(VENV)/bin/tensorboard --logdir $(RUN_DIR)   (then open http://localhost:6006)"

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.ntk

clean:
	rm -rf $(VENV) build *.egg-info
