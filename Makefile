# `make run` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

HOST ?= 127.0.0.1

.PHONY: install run test lint bench bench-agent clean vllm-venv checkov-venv litellm-venv test-vllm \
        clients-venv lmeval-venv test-lm-eval \
        test-spec-long llama-server image images image-agent image-modelserver image-kb

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

## Start the whole stack on the embedded defaults: model server (llama.cpp + bundled SmolLM2-135M),
## knowledge base (this project's docs) and agent (chat page at http://$(HOST):8080/).
run: $(STAMP)
	$(BIN)/archon up --host $(HOST)

## Lint and type-check (mypy: [tool.mypy] in pyproject.toml), then the whole test suite (real
## servers, real inference, real vLLM on the CPU).
test: $(STAMP) images vllm-venv checkov-venv clients-venv lmeval-venv llama-server
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

## llama.cpp's llama-server from the pinned llama-cpp-python sdist (~9 min once, then cached):
## the oracle of the sampling parity test and the serving benchmark's peer.
llama-server: $(STAMP)
	bash benchmarks/build_llama_server.sh

## vLLM's CPU build in its own venv (3.5 GB) for the test that runs the vLLM engine for real.
vllm-venv:
	PYTHON=$(PYTHON) bash scripts/setup-vllm-venv.sh .venv-vllm

## lm-evaluation-harness (PyPI lm-eval, no torch) in its own venv: its datasets/evaluate pins.
lmeval-venv:
	PYTHON=$(PYTHON) bash scripts/setup-lmeval-venv.sh .venv-lmeval

## lm-eval on the whole local task (tests/data/lm_eval) against a real `archon serve`, checked
## against llama-cpp-python's own loglikelihoods; writes docs/benchmarks.md ("lm-evaluation-harness").
test-lm-eval: $(STAMP) lmeval-venv
	ARCHON_LM_EVAL_LIMIT=0 ARCHON_LM_EVAL_WRITE=docs/benchmarks.md \
		$(BIN)/python -m pytest -q -s tests/integration/test_lm_eval.py

## checkov (manifest security checks) in its own venv: it pins older shared dependencies.
checkov-venv:
	PYTHON=$(PYTHON) bash scripts/setup-checkov-venv.sh .venv-checkov

## The client libraries (LangChain, the Agents SDK, instructor, llama-index, LiteLLM, pydantic-ai)
## in two venvs of their own (.venv-clients, .venv-clients-openai2): the client matrix's oracle.
clients-venv:
	PYTHON=$(PYTHON) bash scripts/setup-clients-venv.sh .venv-clients

## Only the real-vLLM test.
test-vllm: $(STAMP) vllm-venv
	$(BIN)/python -m pytest -q tests/integration/test_vllm_engine.py

## The `archon` image on a fresh machine: podman, mmdebstrap, runc and uidmap installed when
## missing, a Debian bookworm base made by mmdebstrap (no image registry), wheels resolved for the
## image's own Python, a portable llama.cpp (every x86-64 CPU variant, chosen at run time; built
## once, ~20 CPU-minutes, then cached in /var/cache/archon); then run as the manifests run it.
image: $(STAMP)
	bash scripts/build-image.sh
	$(BIN)/python -m pytest -q tests/integration/test_image.py -k 'not part_images'

## One part alone (pyproject.toml's extras: the agent's image has no torch, llama.cpp or Qdrant),
## tagged ghcr.io/archon-platform/archon-<part>:0.1.0.
image-agent image-modelserver image-kb: image-%: $(STAMP)
	EXTRAS=$* bash scripts/build-image.sh ghcr.io/archon-platform/archon-$*:0.1.0

## The image and the three part images, built before `make test`'s other steps so a broken image
## fails fast; tests/integration/test_image.py (in the suite) runs them. Layers are cached: a change
## to src/ rebuilds only the last ones.
images: $(STAMP)
	bash scripts/build-image.sh
	$(MAKE) --no-print-directory image-agent image-kb image-modelserver

## The OpenAI-spec property test with more examples (default 500 per endpoint, ~40 min on 2
## cores); writes its result to docs/benchmarks.md ("OpenAI spec conformance").
test-spec-long: $(STAMP)
	ARCHON_SPEC_EXAMPLES=$${ARCHON_SPEC_EXAMPLES:-500} ARCHON_SPEC_WRITE=docs/benchmarks.md \
		$(BIN)/python -m pytest -q -s tests/integration/test_openai_spec.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

## Benchmark against llama.cpp's llama-server and llama-cpp-python's server (builds the former), then the agent.
bench: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py --write docs/benchmarks.md
	$(MAKE) bench-agent

## The agent's added latency and requests/s over a direct call, against LiteLLM's proxy (~4 min).
bench-agent: $(STAMP) litellm-venv
	$(BIN)/python benchmarks/agent_bench.py --write docs/benchmarks.md

## LiteLLM's proxy (the agent benchmark's peer) in its own venv: it pins shared dependencies.
litellm-venv:
	PYTHON=$(PYTHON) bash scripts/setup-litellm-venv.sh .venv-litellm

clean:
	rm -rf $(VENV) .venv-vllm .venv-checkov .venv-litellm .venv-clients .venv-clients-openai2 .venv-lmeval .pytest_cache .ruff_cache .mypy_cache
