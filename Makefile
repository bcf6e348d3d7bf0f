# Two commands do everything on a fresh machine: `make demo` and `make test`.
# They install from requirements.lock (every package pinned, taken from a green
# run of `make test-latest`); pyproject.toml keeps ranges so users' own
# environments resolve. The pinned CPU torch keeps set-up off the multi-GB CUDA
# build here; GPU users pick theirs with `make TORCH_PIN="torch==2.x.y+cu12z" test`.
PYTHON    ?= python3
TORCH_PIN ?= torch==2.13.0
LOCK      := requirements.lock
EXTRAS    := .[dev,bench]
OFFLINE   := HF_HUB_OFFLINE=1

VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LATEST := .venv-latest

.PHONY: demo test test-latest lock bench clean

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -c $(LOCK) -e "$(EXTRAS)"
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(BIN)/mmlens demo

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -n 2 tests

# The newest releases pyproject allows (torch kept on its CPU pin), in their own
# environment, rebuilt every time: transformers changes its internals often.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	$(LATEST)/bin/pip install -q $(TORCH_PIN)
	echo "$(TORCH_PIN)" > $(LATEST)/torch-pin.txt
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-pin.txt -e "$(EXTRAS)"
	$(LATEST)/bin/pip freeze --exclude-editable | grep -iE '^(transformers|typer|click|torch)=='
	$(OFFLINE) $(LATEST)/bin/python -m pytest -n 2 tests

# Regenerate the lock from the environment `make test-latest` just passed in.
lock: test-latest
	$(LATEST)/bin/pip freeze --exclude-editable | grep -viE '^(torch|mmlens)==' > $(LOCK)
	@echo "wrote $(LOCK): $$(wc -l < $(LOCK)) packages"

clean:
	rm -rf $(VENV) $(LATEST) out
