#!/usr/bin/env bash
# The client libraries teams build on, in their own virtualenvs, for the client matrix
# (tests/integration/test_client_matrix.py runs tests/clients/drive_*.py with them). Kept apart
# from .venv: Archon must work with what these libraries send, whatever versions Archon itself
# uses. Versions are pinned, so a library release never changes what the matrix tests.
#
# Two venvs, because the pins do not resolve together: openai-agents and pydantic-ai need
# openai>=3, while llama-index-llms-openai needs openai<3 and instructor 1.17 needs jiter<0.15
# (openai 3.63 needs jiter>=0.16). So:
#   $VENV           openai 3: langchain-openai, openai-agents, litellm, pydantic-ai-slim
#   $VENV-openai2   openai 2: instructor, llama-index (OpenAILike, OpenAILikeEmbedding)
# Idempotent: a stamp file named after the pins skips the work next time.
set -euo pipefail
VENV="${1:-.venv-clients}"
PYTHON="${PYTHON:-python3}"

install_venv() {
    local venv="$1" imports="$2"
    shift 2
    local stamp
    stamp="$venv/.installed-$(printf '%s\n' "$@" | cksum | cut -d' ' -f1)"
    [[ -f "$stamp" ]] && return 0
    test -x "$venv/bin/python" || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q "$@"
    "$venv/bin/python" -c "import $imports"
    touch "$stamp"
}

install_venv "$VENV" "openai, langchain_openai, agents, litellm, pydantic_ai" \
    "openai==3.63.0" \
    "langchain-openai==1.8.1" \
    "openai-agents==0.25.0" \
    "litellm==1.110.2" \
    "pydantic-ai-slim[openai]==2.78.0"

install_venv "$VENV-openai2" \
    "openai, instructor, llama_index.llms.openai_like, llama_index.embeddings.openai_like" \
    "openai==2.54.0" \
    "instructor==1.17.0" \
    "llama-index-llms-openai-like==0.8.1" \
    "llama-index-embeddings-openai-like==0.4.0"
