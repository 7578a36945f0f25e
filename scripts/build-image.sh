#!/usr/bin/env bash
# Build the `archon` image with podman (or buildah) without any image registry:
#   1. a Debian bookworm root filesystem made by mmdebstrap from the Debian archive, imported as
#      the base image (Python 3.11 is bookworm's python3);
#   2. wheels/ filled from this machine's pip cache and index (`pip wheel`), so the build
#      installs from them alone (PIP_NO_INDEX=1): llama-cpp-python is not compiled again and
#      nothing inside the build has to reach PyPI (where a TLS-intercepting proxy's CA, known
#      to the host only, would fail it);
#   3. `podman build --build-arg BASE=<that base>`.
# Usage: scripts/build-image.sh [IMAGE]   (default ghcr.io/archon-platform/archon:0.1.0)
# Env: ENGINE=podman|buildah, MIRROR (default http://deb.debian.org/debian), PYTHON (.venv/bin/python),
#      EXTRAS: the parts to install (pyproject.toml's extras: modelserver, kb, agent, ops; default
#      all), e.g. EXTRAS=agent for an agent image without torch, llama.cpp or Qdrant.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${1:-ghcr.io/archon-platform/archon:0.1.0}
ENGINE=${ENGINE:-podman}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PYTHON=${PYTHON:-.venv/bin/python}
EXTRAS=${EXTRAS:-all}
BASE=localhost/archon-base:bookworm

need() { command -v "$1" >/dev/null || { echo "build-image: $1 not found (apt-get install $2)" >&2; exit 2; }; }
need "$ENGINE" "$ENGINE"
need mmdebstrap mmdebstrap

if ! "$ENGINE" image exists "$BASE" 2>/dev/null; then
  echo "build-image: making $BASE with mmdebstrap from $MIRROR" >&2
  tar=$(mktemp --suffix=.tar)
  trap 'rm -f "$tar"' EXIT
  mmdebstrap --variant=minbase --quiet \
    --include=python3,python3-venv,ca-certificates,libgomp1,passwd \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    bookworm "$tar" \
    "deb $MIRROR bookworm main" \
    "deb $MIRROR bookworm-updates main" \
    "deb ${MIRROR%/debian}/debian-security bookworm-security main"
  "$ENGINE" import --change 'CMD ["/bin/bash"]' "$tar" "$BASE" >/dev/null
fi

# Some hosts (sandboxed VMs without CAP_SYS_RESOURCE, hybrid cgroups) cannot start containers
# with podman's defaults: crun refuses hybrid cgroups and the default rlimits cannot be set.
# runc with lower explicit rlimits works there. Use the first way that starts the base.
FLAGS=() RUN_FLAGS=()
if [ "$ENGINE" = podman ] && ! podman run --rm "$BASE" true >/dev/null 2>&1; then
  FLAGS=(--runtime runc) RUN_FLAGS=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)
  if ! podman "${FLAGS[@]}" run --rm "${RUN_FLAGS[@]}" "$BASE" true; then
    echo "build-image: podman cannot start a container here (above: the runtime's error)" >&2
    exit 3
  fi
  echo "build-image: using ${FLAGS[*]} ${RUN_FLAGS[*]} (podman's defaults cannot start here)" >&2
fi

mkdir -p wheels
echo "build-image: collecting wheels into wheels/ (pip's cache first)" >&2
"$PYTHON" -m pip wheel --quiet --wheel-dir wheels ".[$EXTRAS]" "setuptools>=68" wheel \
  2> >(grep -v '^WARNING: Location' >&2)

echo "build-image: building $IMAGE ($EXTRAS) on $BASE" >&2
if [ "$ENGINE" = buildah ]; then
  buildah bud --format docker --layers --build-arg "BASE=$BASE" --build-arg "EXTRAS=$EXTRAS" --build-arg PIP_NO_INDEX=1 -t "$IMAGE" .
else
  podman "${FLAGS[@]}" build "${RUN_FLAGS[@]}" --format docker --layers --build-arg "BASE=$BASE" --build-arg "EXTRAS=$EXTRAS" --build-arg PIP_NO_INDEX=1 -t "$IMAGE" .
fi
"$ENGINE" image ls "$IMAGE"
