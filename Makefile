# tuneserve — `make serve` and `make test` do everything on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
HOST   ?= 127.0.0.1
MODELS ?=
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

.PHONY: setup models serve test bench bento clean

# Re-installs when pyproject.toml changes. torch/torchvision are pinned to the wheels on local disk.
$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	@touch $@

setup: $(BIN)/.installed

# Builds the default recipes (or MODELS=a,b) that are missing from exported/.
models: setup
	$(BIN)/tuneserve build $(if $(MODELS),--models $(MODELS))

serve: models
	$(BIN)/tuneserve serve --host $(HOST) --port $(PORT)

test: setup
	$(BIN)/pytest

bench: models
	$(BIN)/python benchmarks/text_classify.py
	$(BIN)/python benchmarks/text_entities.py
	$(BIN)/python benchmarks/image_classify.py
	$(BIN)/python benchmarks/loadtest_tool.py

bento: models
	$(BIN)/bentoml build

clean:
	rm -rf $(VENV) exported/*/ exported/.*.building
