#!/usr/bin/env bash
# Build the `archon` image with podman on a fresh machine, without any image registry:
#   1. the tools: podman, mmdebstrap, runc, uidmap (scripts/install-system-deps.sh installs the
#      missing ones, `apt-get update` first; without root it stops naming the packages);
#   2. a Debian bookworm root filesystem made by mmdebstrap from the Debian archive, imported as
#      the base image (Python 3.11 is bookworm's python3, 3.11.2);
#   3. the wheels for the image's own Python and glibc, not the host's: uv resolves
#      pyproject.toml's extras for that interpreter (so environment markers such as redis's
#      `async-timeout; python_full_version < "3.11.3"` are evaluated for the image), pip
#      downloads exactly those pins as binary wheels for that platform, into a cache outside
#      the repository; the build installs from them alone (PIP_NO_INDEX=1), so nothing inside
#      the build has to reach PyPI;
#   4. a portable llama-cpp-python wheel (scripts/build-llama-wheel.sh: every x86-64 CPU
#      variant, chosen at run time; built once, then cached);
#   5. `podman build --build-arg BASE=<that base>` (layers cached: a change to src/ rebuilds
#      only the last layers).
# Usage: scripts/build-image.sh [IMAGE]   (default ghcr.io/archon-platform/archon:0.1.0)
# Env: MIRROR (default http://deb.debian.org/debian), PYTHON (.venv/bin/python),
#      EXTRAS: the parts to install (pyproject.toml's extras: modelserver, kb, agent, ops; default
#      all), e.g. EXTRAS=agent for an agent image without torch, llama.cpp or Qdrant;
#      ARCHON_CACHE (/var/cache/archon): base tarball, wheels, uv, the llama.cpp build.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-ghcr.io/archon-platform/archon:0.1.0}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-.venv/bin/python}
EXTRAS=${EXTRAS:-all}
CACHE=${ARCHON_CACHE:-/var/cache/archon}
UV_VERSION=0.13.10
BASE=localhost/archon-base:bookworm
start=$SECONDS
step() { echo "build-image: [$((SECONDS - start))s] $*" >&2; }

# 1. The tools.
declare -A TOOLS=([podman]=podman [mmdebstrap]=mmdebstrap [runc]=runc [newuidmap]=uidmap)
missing=()
for cmd in "${!TOOLS[@]}"; do command -v "$cmd" >/dev/null || missing+=("${TOOLS[$cmd]}"); done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] || command -v sudo >/dev/null; then
    step "installing ${missing[*]} (scripts/install-system-deps.sh)"
    bash scripts/install-system-deps.sh
  else
    echo "build-image: needs the Debian packages ${missing[*]}: run 'apt-get install ${missing[*]}' as root" >&2
    exit 2
  fi
fi

# 2. The base image.
if ! podman image exists "$BASE"; then
  step "making $BASE with mmdebstrap from $MIRROR"
  tar=$(mktemp --suffix=.tar)
  trap 'rm -f "$tar"' EXIT
  mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates,libgomp1,passwd \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    bookworm "$tar" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb ${MIRROR%/debian}/debian-security bookworm-security main"
  podman import --change 'CMD ["/bin/bash"]' "$tar" "$BASE" >/dev/null
  rm -f "$tar"
fi

# Some hosts (sandboxed VMs without CAP_SYS_RESOURCE, hybrid cgroups) cannot start containers
# with podman's defaults: crun refuses hybrid cgroups and the default rlimits cannot be set.
# runc with lower explicit rlimits works there. Use the first way that starts the base.
FLAGS=() RUN_FLAGS=()
if ! podman run --rm "$BASE" true >/dev/null 2>&1; then
  FLAGS=(--runtime runc) RUN_FLAGS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  if ! podman "${FLAGS[@]}" run --rm "${RUN_FLAGS[@]}" "$BASE" true; then
    echo "build-image: podman cannot start a container here (above: the runtime's error)" >&2
    exit 3
  fi
  step "using ${FLAGS[*]} ${RUN_FLAGS[*]} (podman's defaults cannot start here)"
fi

# 3. Wheels for the image's interpreter and platform.
read -r PY_VERSION GLIBC < <(podman "${FLAGS[@]}" run --rm "${RUN_FLAGS[@]}" "$BASE" python3 -c \
  'import platform; print(platform.python_version(), platform.libc_ver()[1].replace(".", "_"))')
PY_TAG=cp$(cut -d. -f1,2 <<<"$PY_VERSION" | tr -d .)
step "resolving .[$EXTRAS] for the image's Python $PY_VERSION, glibc ${GLIBC/_/.}"
UV=$CACHE/uv-$UV_VERSION/bin/uv
if [ ! -x "$UV" ]; then
  "$PYTHON" -m venv "$CACHE/uv-$UV_VERSION"
  "$CACHE/uv-$UV_VERSION/bin/pip" install --quiet "uv==$UV_VERSION"
fi
# pip's own settings on this machine (a local wheel folder or index, constraints), for uv too;
# unsafe-best-match: the highest version across all indexes, as pip picks.
uv_args=()
pip_setting() { "$PYTHON" -m pip config list 2>/dev/null | sed -n "s/^[^.]*\\.$1='\\(.*\\)'\$/\\1/p" | tail -1; }
for link in $(pip_setting find-links); do uv_args+=(--find-links "$link"); done
for url in $(pip_setting extra-index-url); do uv_args+=(--extra-index-url "$url"); done
for url in $(pip_setting index-url); do uv_args+=(--index-url "$url"); done
for file in $(pip_setting constraint); do uv_args+=(--constraint "$file"); done
export SSL_CERT_FILE=${SSL_CERT_FILE:-$(pip_setting cert)}
[ -n "$SSL_CERT_FILE" ] || unset SSL_CERT_FILE
extra_args=()
IFS=, read -ra parts <<<"$EXTRAS"
for part in "${parts[@]}"; do extra_args+=(--extra "$part"); done
pins=$(mktemp)
trap 'rm -f "${tar:-}" "$pins" "$pins.missing" "$pins.build"' EXIT
# With the build backend of Archon itself (pyproject's build-system), built from wheels/ too.
printf 'setuptools>=68\nwheel\n' >"$pins.build"
"$UV" pip compile --quiet pyproject.toml "$pins.build" "${extra_args[@]}" "${uv_args[@]}" \
  --index-strategy unsafe-best-match \
  --python-version "$PY_VERSION" --python-platform "x86_64-manylinux_$GLIBC" \
  --no-header --no-annotate --output-file "$pins"
rm -f "$pins.build"

# wheels/ (the build context's) holds exactly this build's wheels and pins, hard links into the
# cache where the filesystem allows: the same set gives the same layer, which podman reuses.
link_wheels() {
  rm -rf wheels/*.whl wheels/requirements.txt
  mkdir -p wheels "$CACHE/image-wheels"
  "$PYTHON" - "$pins" "$CACHE/image-wheels" wheels "$@" <<'EOF'
import os, re, shutil, sys
from pathlib import Path

pins, cache, dest = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
missing_to = Path(sys.argv[4]) if len(sys.argv) > 4 else None
def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()
have = {}
for wheel in cache.glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    have[(norm(name), version)] = wheel
missing = []
for line in pins.read_text().splitlines():
    name, sep, version = line.split(";")[0].strip().partition("==")
    if not sep or norm(name) == "llama_cpp_python":
        continue
    wheel = have.get((norm(name), version))
    if wheel is None:
        missing.append(f"{name}=={version}")
        continue
    try:
        os.link(wheel, dest / wheel.name)
    except OSError:
        shutil.copy(wheel, dest / wheel.name)
if missing and missing_to:
    missing_to.write_text("".join(f"{pin}\n" for pin in missing))
elif missing:
    sys.exit(f"build-image: no wheel for {', '.join(missing)} in {cache}")
EOF
}
link_wheels "$pins.missing"
if [ -s "$pins.missing" ]; then
  # Every manylinux level up to the image's glibc (pip does not widen --platform itself).
  platforms=()
  for ((minor = ${GLIBC#2_}; minor >= 5; minor--)); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform linux_x86_64)
  step "downloading $(wc -l <"$pins.missing") wheels into $CACHE/image-wheels"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: --dest "$CACHE/image-wheels" \
    --python-version "$PY_VERSION" --implementation cp --abi "$PY_TAG" \
    --abi abi3 --abi none "${platforms[@]}" -r "$pins.missing" \
    2> >(grep -v '^WARNING: Location' >&2)
  link_wheels
fi
rm -f "$pins.missing"
cp "$pins" wheels/requirements.txt

# 4. llama.cpp, for the parts that run it.
case ",$EXTRAS," in
  *,all,* | *,modelserver,*)
    step "the portable llama-cpp-python wheel (scripts/build-llama-wheel.sh)"
    PYTHON=$PYTHON ARCHON_CACHE=$CACHE bash scripts/build-llama-wheel.sh wheels >/dev/null
    ;;
esac

# 5. The image. Each dependency change leaves its old layers (2 GB for the full image): with
# under 20 GB free, the untagged ones go first (a later build may then redo its dependencies).
store=$(podman info --format '{{.Store.GraphRoot}}')
if (($(df --output=avail -k "$store" | tail -1) < 20 * 1024 * 1024)); then
  step "under 20 GB free in $store: removing untagged images"
  podman image prune -f >/dev/null
fi
step "building $IMAGE ($EXTRAS) on $BASE"
podman "${FLAGS[@]}" build "${RUN_FLAGS[@]}" --format docker --layers \
  --build-arg "BASE=$BASE" --build-arg "EXTRAS=$EXTRAS" --build-arg PIP_NO_INDEX=1 -t "$IMAGE" .
podman image ls "$IMAGE"
step "done"
