#!/usr/bin/env bash
# Debian packages Archon's build and tests need. Installs only what is missing, so a warm
# machine skips apt entirely. Runs as root (CI, containers) or through sudo.
set -euo pipefail

# command -> Debian package
declare -A NEED=(
  [cmake]=cmake        # llama-cpp-python compiles llama.cpp on install
  [g++]=g++
  [make]=make
  [git]=git
  [curl]=curl          # the README's example request
  [promtool]=prometheus  # alert rule tests and the Prometheus the monitoring tests scrape with
  [chromium]=chromium    # the headless browser the agent chat-page test drives (via playwright)
  [redis-server]=redis-server  # the agent's shared limits store, started by its tests
  # The `archon` image (scripts/build-image.sh, tests/integration/test_image.py): podman builds
  # and runs it, mmdebstrap makes its Debian base without an image registry, runc is the runtime
  # that starts containers where crun (podman's default pick) cannot, uidmap maps the image's
  # non-root user.
  [podman]=podman
  [mmdebstrap]=mmdebstrap
  [runc]=runc
  [newuidmap]=uidmap
)
missing=()
for cmd in "${!NEED[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${NEED[$cmd]}")
done
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if ((${#missing[@]} == 0)); then
  exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
