#!/usr/bin/env bash
# checkov (the manifest security linter the tests run) in its own virtualenv: it pins older
# versions of packages Archon's environment also uses. Idempotent.
set -euo pipefail
VENV="${1:-.venv-checkov}"
CHECKOV_VERSION=3.3.30
STAMP="$VENV/.installed-$CHECKOV_VERSION"
[[ -f "$STAMP" ]] && exit 0
PYTHON="${PYTHON:-python3}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION"
touch "$STAMP"
