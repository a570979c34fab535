# Two images from one file (docker-compose.yml builds both):
#   docker build --target api -t secev-api .        the HTTP API: requirements-api.txt only, no torch
#   docker build --target worker -t secev-worker .  the RQ worker: torch from PyPI (its CUDA wheels:
#                                                   runs on a GPU with the NVIDIA container toolkit, and on a CPU)
#   docker build --target worker --build-arg TORCH_VARIANT=cpu -t secev-worker:cpu .
#                                                   the same worker with the CPU-only torch and torchvision
#                                                   wheels of PyTorch's CPU index (no CUDA libraries: GBs smaller)
# Both run as the unprivileged user "service" (uid 10001) with their data in /data (APPDATA).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APPDATA=/data PATH=/opt/venv/bin:$PATH
WORKDIR /srv
RUN useradd --no-log-init --create-home --uid 10001 service && mkdir -p /data && chown service:service /data

# The API's dependencies, in a virtualenv the final stages copy (the worker's build starts from it).
FROM base AS api-deps
COPY requirements-api.txt ./
RUN python -m venv /opt/venv && pip install --no-cache-dir -r requirements-api.txt

FROM api-deps AS worker-deps
# cuda (default): requirements.txt's torch/torchvision pair from PyPI, whose wheels bring the CUDA libraries
# (the driver comes from the host). cpu: that pair's "+cpu" builds from TORCH_CPU_INDEX first, both of them
# (the CPU-only torch beside PyPI's torchvision does not import), without dependencies; requirements.txt
# then finds torch==2.15.0 and torchvision==0.29.2 satisfied by them (PEP 440 ignores "+cpu") and
# installs everything else from PyPI.
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
COPY requirements.txt ./
RUN if [ "$TORCH_VARIANT" = cpu ]; then \
      pip install --no-cache-dir --no-deps --index-url "$TORCH_CPU_INDEX" torch==2.15.0+cpu torchvision==0.29.2+cpu; \
    elif [ "$TORCH_VARIANT" != cuda ]; then \
      echo "TORCH_VARIANT must be cuda or cpu, not $TORCH_VARIANT" >&2; exit 1; \
    fi \
    && pip install --no-cache-dir -r requirements.txt \
    && python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

FROM base AS worker
COPY --from=worker-deps /opt/venv /opt/venv
COPY app ./app
COPY worker.py ./
USER 10001
# SIGTERM (docker stop) is RQ's warm shutdown: the running job finishes first (compose's stop_grace_period).
STOPSIGNAL SIGTERM
# Healthy while this container's worker is registered on the queue in Redis, heartbeating, and alive.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["python", "-m", "app.probe", "worker"]
CMD ["python", "worker.py"]

# The default target (a plain `docker build .`): the API.
FROM base AS api
COPY --from=api-deps /opt/venv /opt/venv
COPY app ./app
USER 10001
EXPOSE 8000
# Every gunicorn setting lives in app/gunicorn_conf.py and reads an environment variable.
ENV BIND=0.0.0.0:8000 WEB_CONCURRENCY=4
# Healthy while /api/health answers "ok" (it says so only while Redis answers).
HEALTHCHECK --interval=15s --timeout=10s --start-period=20s --retries=3 CMD ["python", "-m", "app.probe", "api"]
CMD ["gunicorn", "-c", "python:app.gunicorn_conf"]
