#!/usr/bin/env bash
# A portable llama-cpp-python wheel for the `archon` image: llama.cpp built for any x86-64 CPU,
# with the CPU backend compiled once per instruction-set level (GGML_CPU_ALL_VARIANTS) as
# libggml-cpu-<variant>.so files that ggml loads at run time (GGML_BACKEND_DL), picking the best
# one the node's CPU supports. One image then serves an old node and an AVX-512 one alike.
#
# llama-cpp-python's CMakeLists installs a fixed list of ggml targets (ggml-cpu among them, but
# not the ggml-cpu-<variant> targets that GGML_CPU_ALL_VARIANTS creates instead), so this script
# unpacks the sdist and appends an install rule for every ggml-cpu-* target before building.
#
# The wheel is cached outside the repository, keyed by the version, the CMake flags and the
# CMakeLists addition: a rebuild happens only when one of them changes (the CPU backend is
# compiled 14 times: 19 CPU-minutes measured, so about 10 minutes on two idle cores).
# Usage: scripts/build-llama-wheel.sh DEST_DIR   (copies the cached wheel there; prints its path)
# Env: PYTHON (.venv/bin/python), ARCHON_CACHE (/var/cache/archon), CMAKE_BUILD_PARALLEL_LEVEL.
# The host must be Debian bookworm (the image's base): the libraries link against its glibc.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:?usage: build-llama-wheel.sh DEST_DIR}
PYTHON=${PYTHON:-.venv/bin/python}
CACHE=${ARCHON_CACHE:-/var/cache/archon}
LLAMA_VERSION=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
# LLAVA_BUILD=OFF: Archon does not use libmtmd (multimodal); llama_cpp imports it only on use.
FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF"
# Appended to llama-cpp-python's CMakeLists.txt: install the CPU backend variants that
# GGML_CPU_ALL_VARIANTS builds (ggml-cpu-x64, ggml-cpu-haswell, ...) next to libggml.
PATCH=$(cat <<'EOF'

# Added by Archon's scripts/build-llama-wheel.sh (see there).
if (LLAMA_BUILD AND GGML_CPU_ALL_VARIANTS)
    get_property(_archon_ggml_targets DIRECTORY vendor/llama.cpp/ggml/src PROPERTY BUILDSYSTEM_TARGETS)
    foreach(_target IN LISTS _archon_ggml_targets)
        get_target_property(_type ${_target} TYPE)
        if (_target MATCHES "^ggml-cpu-" AND _type STREQUAL "MODULE_LIBRARY")
            llama_cpp_python_install_target(${_target})
        endif()
    endforeach()
endif()
EOF
)
KEY=$(printf '%s\n' "$LLAMA_VERSION" "$FLAGS" "$PATCH" | sha256sum | cut -c1-12)
OUT="$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$KEY"

# One build at a time: a second caller waits for the first one's wheel.
mkdir -p "$CACHE/wheels"
exec 9>"$CACHE/wheels/.llama-build.lock"
flock 9
if ! ls "$OUT"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  . /etc/os-release
  if [ "${VERSION_CODENAME:-}" != bookworm ]; then
    echo "build-llama-wheel: this host is ${PRETTY_NAME:-unknown}, not Debian bookworm (the image's base): build on bookworm" >&2
    exit 2
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$CACHE/src"
  sdist="$CACHE/src/llama_cpp_python-$LLAMA_VERSION.tar.gz"
  if [ ! -f "$sdist" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$CACHE/src" "llama-cpp-python==$LLAMA_VERSION"
  fi
  tar -xzf "$sdist" -C "$work"
  src="$work/llama_cpp_python-$LLAMA_VERSION"
  printf '%s\n' "$PATCH" >>"$src/CMakeLists.txt"
  echo "build-llama-wheel: building llama-cpp-python $LLAMA_VERSION ($FLAGS); started $(date -u +%T)" >&2
  start=$SECONDS
  CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$src"
  whl=$(ls "$work"/dist/llama_cpp_python-*.whl)
  variants=$("$PYTHON" -c 'import sys, zipfile; print(sum(n.startswith("llama_cpp/lib/libggml-cpu-") for n in zipfile.ZipFile(sys.argv[1]).namelist()))' "$whl")
  if [ "$variants" -lt 2 ]; then
    echo "build-llama-wheel: $whl holds $variants CPU backend variants; expected several" >&2
    exit 3
  fi
  mkdir -p "$OUT"
  cp "$whl" "$OUT/"
  echo "build-llama-wheel: built in $((SECONDS - start)) s with $variants CPU variants: $OUT" >&2
fi
mkdir -p "$DEST"
rm -f "$DEST"/llama_cpp_python-*.whl
cp "$OUT"/llama_cpp_python-*.whl "$DEST/"
ls "$DEST"/llama_cpp_python-*.whl
