# BrainSeg: `make run` opens the app on the bundled demo scan; `make test` runs the whole suite.
# Both set themselves up on a fresh Debian machine with Python 3.11 (a virtualenv in .venv).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean deps ants

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23"

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e ".[test,all]"
	touch $@

deps:
	bash tools/system_deps.sh

run: deps $(VENV)/.installed
	@if [ -z "$$DISPLAY" ] && [ -z "$$WAYLAND_DISPLAY" ]; then \
	  echo "No display: running under Xvfb (xvfb-run). On a desktop, run: $(BIN)/brainseg-gui --demo"; \
	  xvfb-run -a -s "-screen 0 1600x1000x24" $(BIN)/brainseg-gui --demo; \
	else $(BIN)/brainseg-gui --demo; fi

test: deps $(VENV)/.installed
	$(BIN)/ruff check --no-cache engine brainseg_gui tests tools bench resources/runtime
	$(BIN)/lint-imports
	QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=2 $(BIN)/pytest -q -p no:cacheprovider tests

bench: $(VENV)/.installed
	$(BIN)/brainseg bench

# ANTs Atropos, the classical peer of bench/proxy_eval.py, in its own venv: antspyx needs a newer
# numpy than MXNet 1.9.1 allows
ants: .venv-ants/.installed
.venv-ants/.installed:
	$(PYTHON) -m venv .venv-ants
	.venv-ants/bin/pip install -q antspyx
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info
