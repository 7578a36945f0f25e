# The `archon` image: the CPU model server (llama.cpp), `archon model pull` and the vLLM
# preflight used by the GPU Deployment's init containers, the agent, the knowledge base, and
# `archon argocd apply` (the Tekton step). The GPU engine itself runs in the pinned
# vllm/vllm-openai image (manifests/model-server).
#   docker build -t ghcr.io/archon-platform/archon:0.1.0 .
#   make image      # the same with podman, on a Debian bookworm base made locally (mmdebstrap)
#
# EXTRAS: the parts installed (pyproject.toml's extras), all of them by default. One part alone:
#   docker build --build-arg EXTRAS=agent -t archon-agent .        # no torch, llama.cpp, Qdrant
#   make image-agent  (or image-modelserver, image-kb)              # the same with podman
#
# BASE: any Debian bookworm image with Python 3.11 (python3, python3-venv). The default is the
# public one; `make image` passes a local one, so no image registry is needed.
# checkov:skip=CKV_DOCKER_7:FROM ${BASE} is the pinned python:3.11-slim-bookworm unless a local base is passed
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG EXTRAS=all
WORKDIR /src
# wheels/: wheels pip takes before the index (`make image` fills it from the host's pip cache,
# so llama-cpp-python is not compiled again). Without a llama-cpp-python wheel there, the
# compiler is installed and llama.cpp is built here (about 8 minutes on 2 cores).
COPY wheels/ /wheels/
RUN case ",$EXTRAS," in *,all,*|*,modelserver,*) needs_llama=1;; *) needs_llama=;; esac; \
    if [ -n "$needs_llama" ] && ! ls /wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then \
      apt-get update \
      && apt-get install -y --no-install-recommends build-essential cmake git \
      && rm -rf /var/lib/apt/lists/*; \
    fi
COPY pyproject.toml README.md ./
COPY src ./src
# GGML_NATIVE=OFF: a llama.cpp built here must run on any x86-64 CPU, not only the build machine's.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=4
# PIP_NO_INDEX=1: install from wheels/ alone (`make image` puts every wheel there, the build
# tools included), for builds where the index cannot be reached from inside the build.
ARG PIP_NO_INDEX=
RUN python3 -m venv /opt/archon \
 && if [ -z "$PIP_NO_INDEX" ]; then /opt/archon/bin/pip install --no-cache-dir --upgrade pip; fi \
 && /opt/archon/bin/pip install --no-cache-dir ${PIP_NO_INDEX:+--no-index} --find-links /wheels ".[$EXTRAS]"

FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /home/archon --create-home archon
COPY --from=build /opt/archon /opt/archon
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
