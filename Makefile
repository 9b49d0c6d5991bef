# `make demo` and `make test` each create .venv when missing, install the project into it and run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# `make test-oldest`: the lowest dependency versions pyproject.toml declares, beside .venv's torch.
OLDEST ?= .venv-oldest
# `make test` runs the suite in this many processes (pytest-xdist; CI has 2 cores).
TEST_PROCESSES ?= 2

# The kit never reaches the network unless asked: albumentations' update check is off and
# Lightning/torchmetrics write their matplotlib cache inside the checkout.
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: demo test test-oldest install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/vitdense fit --config recipes/demo_shapes_mask_rcnn.yaml

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadgroup --no-loadscope-reorder --durations=15

$(OLDEST)/.installed: pyproject.toml .ci/oldest_constraints.py $(VENV)/.installed
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(BIN)/python .ci/oldest_constraints.py > $(OLDEST)/constraints.txt
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet --constraint $(OLDEST)/constraints.txt -e '.[test]'
	touch $@

test-oldest: $(OLDEST)/.installed
	$(OLDEST)/bin/python -m pytest -m oldest
