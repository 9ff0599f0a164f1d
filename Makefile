# tuneserve — `make serve` and `make test` do everything on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3000
HOST   ?= 127.0.0.1
MODELS ?=
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1

# Programs some recipes need from the system (speech synthesis for the keyword data), installed with
# apt-get when missing (the machines run as root; elsewhere install them by hand).
SYSTEM_PROGRAMS := espeak-ng

.PHONY: setup system models serve test test-fast lint protos bench bench-peers bench-report bento container clean

system:
	@missing=""; for p in $(SYSTEM_PROGRAMS); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then echo "installing$$missing"; apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: please install$$missing (needed by the keyword recipe)"; fi; \
	fi

# Re-installs when pyproject.toml changes. torch/torchvision are pinned to the wheels on local disk.
$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	@touch $@

setup: system $(BIN)/.installed

# Builds the default recipes (or MODELS=a,b) that are missing from exported/.
models: setup
	$(BIN)/tuneserve build $(if $(MODELS),--models $(MODELS))

# Serves as soon as one model is built (the cheapest first); the other missing defaults build in the
# background and are loaded as they land (GET /v1/models shows what is still building). With
# MODELS=a,b: builds those first, then serves.
serve: setup
ifneq ($(MODELS),)
	$(BIN)/tuneserve build --models $(MODELS)
	$(BIN)/tuneserve serve --host $(HOST) --port $(PORT)
else
	$(BIN)/tuneserve serve --build-missing --host $(HOST) --port $(PORT)
endif

# Every tier: fast contract tests, pipeline tests (tiny models trained in the session), end-to-end
# tests against real servers.
test: setup
	$(BIN)/pytest

# ruff (lint and format) over the tree, mypy over the packages.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy serving training

# gRPC stubs of the Open Inference Protocol (committed; regenerate after editing the .proto).
protos: setup
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. serving/protocols/grpc_predict_v2.proto

# The in-process tier only (seconds): run before every commit.
test-fast: setup
	$(BIN)/pytest -m fast -q

bench: models
	$(BIN)/python benchmarks/text_classify.py
	$(BIN)/python benchmarks/text_entities.py
	$(BIN)/python benchmarks/image_classify.py
	$(BIN)/python benchmarks/audio_classify.py
	$(BIN)/python benchmarks/tabular_predict.py
	$(BIN)/python benchmarks/loadtest_tool.py
	$(BIN)/python benchmarks/hardening.py
	$(BIN)/python benchmarks/ocr.py
	$(BIN)/python benchmarks/engines.py
	$(BIN)/python benchmarks/report.py

# tuneserve against LitServe, Ray Serve and plain FastAPI on the same models (benchmarks/peers/); the
# peers live in .venv-bench, apart from the project's environment.
bench-peers: models
	@test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/peers/run.py --model intent
	$(BIN)/python benchmarks/peers/run.py --model surface-defects

# docs/benchmarks.md from benchmarks/results/*.json (tests/test_docs.py fails while it is stale).
bench-report: $(BIN)/.installed
	$(BIN)/python benchmarks/report.py

# The Bento (serving code + built models, run-time requirements only). GPU=1: the CUDA profile.
bento: models
	$(BIN)/python deploy/bento_profile.py $(if $(GPU),gpu,cpu) --build

# Needs a Docker (or compatible) engine; the Bento itself builds without one.
container: bento
	$(BIN)/bentoml containerize tuneserve:latest $(if $(GPU),--image-tag tuneserve:gpu,--image-tag tuneserve:cpu)

clean:
	rm -rf $(VENV) exported/*/ exported/.*.building
