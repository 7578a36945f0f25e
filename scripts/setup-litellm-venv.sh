#!/usr/bin/env bash
# LiteLLM's proxy (the peer in benchmarks/agent_bench.py) in its own virtualenv: it pins versions
# of packages Archon's environment also uses. Idempotent.
set -euo pipefail
VENV="${1:-.venv-litellm}"
LITELLM_VERSION=1.108.7
STAMP="$VENV/.installed-$LITELLM_VERSION"
[[ -f "$STAMP" ]] && exit 0
PYTHON="${PYTHON:-python3}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "litellm[proxy]==$LITELLM_VERSION"
touch "$STAMP"
