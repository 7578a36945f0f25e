# The `archon` image: the CPU model server (llama.cpp), `archon model pull` and the vLLM
# preflight used by the GPU Deployment's init containers, and later the agent and knowledge base.
#   docker build -t ghcr.io/archon-platform/archon:0.1.0 .
# The GPU engine itself runs in the pinned vllm/vllm-openai image (manifests/model-server).

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# llama-cpp-python compiles llama.cpp here. GGML_NATIVE=OFF: the image must run on any x86-64
# CPU, not only the build machine's.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=4
RUN python -m venv /opt/archon \
 && /opt/archon/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/archon/bin/pip install --no-cache-dir .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /home/archon --create-home archon
COPY --from=build /opt/archon /opt/archon
ENV PATH=/opt/archon/bin:$PATH \
    HF_HOME=/models \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health').status != 200)"
ENTRYPOINT ["archon"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
