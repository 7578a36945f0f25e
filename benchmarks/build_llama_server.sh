#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (a benchmark peer and a test oracle) from the sdist of
# the llama-cpp-python version Archon pins, so both run the same llama.cpp. The build lives in a
# cache dir outside the repository: ~9 min on 2 cores the first time, then reused. Prints the
# binary's path.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VERSION=$(grep -oP '"llama-cpp-python==\K[0-9.]+' "$ROOT/pyproject.toml" | head -1)
CACHE="${ARCHON_BENCH_CACHE:-$HOME/.cache/archon/bench}"
BUILD="$CACHE/llama-server-$VERSION"
BIN="$BUILD/bin/llama-server"
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
PIP="${PIP:-$ROOT/.venv/bin/pip}"
mkdir -p "$CACHE/sdist"
# --no-binary for this one package only: ':all:' would also build pip's build tools from source.
"$PIP" download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" \
  -d "$CACHE/sdist" >&2
SRC="$CACHE/src-$VERSION"
rm -rf "$SRC" && mkdir -p "$SRC"
tar xzf "$CACHE/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$SRC" --strip-components=1
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DGGML_NATIVE=ON >&2
cmake --build "$BUILD" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
