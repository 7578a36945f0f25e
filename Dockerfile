# The `archon` image: the CPU model server (llama.cpp), `archon model pull` and the vLLM
# preflight used by the GPU Deployment's init containers, the agent, the knowledge base, and
# `archon argocd apply` (the Tekton step). The GPU engine itself runs in the pinned
# vllm/vllm-openai image (manifests/model-server).
#   make image      # podman, on a Debian bookworm base made locally (mmdebstrap): scripts/build-image.sh
#   docker build -t ghcr.io/archon-platform/archon:0.1.0 .   # from PyPI, on python:3.11-slim-bookworm
#
# EXTRAS: the parts installed (pyproject.toml's extras), all of them by default. One part alone:
#   make image-agent  (or image-modelserver, image-kb)              # EXTRAS=agent etc.
#   docker build --build-arg EXTRAS=agent -t archon-agent .        # no torch, llama.cpp, Qdrant
#
# BASE: any Debian bookworm image with Python 3.11 (python3, python3-venv). The default is the
# public one; `make image` passes a local one, so no image registry is needed.
# checkov:skip=CKV_DOCKER_7:FROM ${BASE} is the pinned python:3.11-slim-bookworm unless a local base is passed
ARG BASE=python:3.11-slim-bookworm

# The dependencies, in a layer of their own: a change to src/ does not reinstall them.
FROM ${BASE} AS deps
ARG EXTRAS=all
# wheels/: what `make image` resolved for this image's Python and downloaded (requirements.txt,
# the pins, and their wheels, with a portable llama-cpp-python: scripts/build-llama-wheel.sh).
# Empty (a plain `docker build`): pip resolves from the index here, and llama.cpp is compiled
# for a baseline x86-64 CPU (GGML_NATIVE=OFF), about 8 minutes on 2 cores.
COPY wheels/ /wheels/
COPY pyproject.toml /src/
# PIP_NO_INDEX=1: install from wheels/ alone, for builds where the index cannot be reached
# from inside the build.
ARG PIP_NO_INDEX=
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=4
RUN set -e; \
    pip="/opt/archon/bin/pip install --no-cache-dir ${PIP_NO_INDEX:+--no-index} --find-links /wheels"; \
    python3 -m venv /opt/archon; \
    if [ -f /wheels/requirements.txt ]; then \
      $pip --no-deps -r /wheels/requirements.txt; \
    else \
      case ",$EXTRAS," in *,all,*|*,modelserver,*) \
        apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
        && rm -rf /var/lib/apt/lists/*;; esac; \
      /opt/archon/bin/pip install --no-cache-dir --upgrade pip; \
      mkdir -p /src/src && touch /src/README.md && $pip "/src[$EXTRAS]"; \
    fi

# Archon itself, as a wheel.
FROM deps AS app
ARG PIP_NO_INDEX=
COPY pyproject.toml README.md /app/
COPY src /app/src
RUN /opt/archon/bin/pip wheel --no-cache-dir --no-deps ${PIP_NO_INDEX:+--no-index} \
      --find-links /wheels --wheel-dir /dist /app

FROM ${BASE}
ARG EXTRAS=all
# git: the knowledge base clones its Git sources (manifests/knowledge-base/sources.yaml).
RUN set -e; packages="libgomp1 ca-certificates"; \
    case ",$EXTRAS," in *,all,*|*,kb,*) packages="$packages git";; esac; \
    if ! dpkg -s $packages >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $packages \
      && rm -rf /var/lib/apt/lists/*; \
    fi; \
    useradd --uid 10001 --user-group --home-dir /home/archon --create-home archon
COPY --from=deps /opt/archon /opt/archon
COPY --from=app /dist/ /tmp/dist/
# --force-reinstall: a plain `docker build` installed an empty `archon` with the dependencies.
RUN /opt/archon/bin/pip install --no-cache-dir --no-deps --no-index --force-reinstall /tmp/dist/*.whl \
 && rm -rf /tmp/dist
# PYTHONDONTWRITEBYTECODE: the pods run with a read-only root filesystem (pip compiled the
# bytecode at install time).
ENV PATH=/opt/archon/bin:$PATH \
    HF_HOME=/models \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
ENTRYPOINT ["archon"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
