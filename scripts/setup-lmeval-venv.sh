#!/usr/bin/env bash
# A separate virtualenv with EleutherAI's lm-evaluation-harness (PyPI `lm-eval`, its `api` extra:
# no torch), for the test and `make test-lm-eval` that run it against `archon serve` as its
# `local-completions` model. Kept apart from .venv: lm-eval pins its own datasets, evaluate and
# scikit-learn. Idempotent: a stamp file skips the work next time.
set -euo pipefail
VENV="${1:-.venv-lmeval}"
LM_EVAL_VERSION=0.4.13
STAMP="$VENV/.installed-$LM_EVAL_VERSION"
[[ -f "$STAMP" ]] && exit 0
PYTHON="${PYTHON:-python3}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "lm-eval[api]==$LM_EVAL_VERSION"
"$VENV/bin/python" -c "import lm_eval.models.openai_completions" 2>/dev/null
touch "$STAMP"
