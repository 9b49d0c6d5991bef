# `make demo` and `make test` each create .venv when missing, install the project into it and run.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# The kit never reaches the network unless asked: albumentations' update check is off and
# Lightning/torchmetrics write their matplotlib cache inside the checkout.
export NO_ALBUMENTATIONS_UPDATE := 1
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib

.PHONY: demo test install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/vitdense fit --config recipes/demo_shapes_mask_rcnn.yaml

test: $(VENV)/.installed
	$(BIN)/python -m pytest
