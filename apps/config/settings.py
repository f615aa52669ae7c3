"""Parsimony settings: everything that varies between machines comes from the environment.

PARSIMONY_ENV=embedded (default): SQLite under var/, tasks in-process, a generated SECRET_KEY.
PARSIMONY_ENV=production: SECRET_KEY and ALLOWED_HOSTS required, HTTPS hardening on.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from apps.config.env import (
    ImproperlyConfiguredEnv,
    database_from_url,
    env_bool,
    env_float,
    env_int,
    env_list,
    env_path,
    env_private_networks,
    env_str,
    secret_key_from_env_or_file,
)

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = env_path("PARSIMONY_VAR_DIR", BASE_DIR / "var")

PARSIMONY_ENV = env_str("PARSIMONY_ENV", "embedded")
if PARSIMONY_ENV not in {"embedded", "production"}:
    raise ImproperlyConfiguredEnv(f"PARSIMONY_ENV={PARSIMONY_ENV!r}: use 'embedded' or 'production'")
PRODUCTION = PARSIMONY_ENV == "production"

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = secret_key_from_env_or_file(production=PRODUCTION, key_file=VAR_DIR / "secret_key")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfiguredEnv("ALLOWED_HOSTS is required when PARSIMONY_ENV=production")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# Uploads, FAISS indexes, KV caches and converted model weights live here.
DATA_ROOT = env_path("DATA_ROOT", VAR_DIR)
DATA_ROOT.mkdir(parents=True, exist_ok=True)
SHARED_DATA_DIR = env_path("PARSIMONY_SHARED_DATA", BASE_DIR.parent / "shared" / "data")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "admincharts",  # only for its static Chart.js (MIT), served by Django: no CDN
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "auditlog",
    "axes",
    "csp",
    "apps.core",
    "apps.accounts",
    "apps.costs",
    "apps.corpora",
    "apps.web",
    "apps.api",
    "apps.rag",
    "apps.agents",
    "apps.evaluations",
    "apps.bulk",
    "apps.answer_cache",
    "apps.conversations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Bodies over their limit answer 413 before anything reads them (apps/core/request_limits.py).
    "apps.core.request_limits.RequestLimitsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "apps.accounts.middleware.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "apps.accounts.middleware.ActiveTeamMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 response.
    "axes.middleware.AxesMiddleware",
]

# The audit log of money and access settings (django-auditlog): who changed which of these, when,
# old and new values; the actor comes from the request (AuditActorMiddleware). docs/costs.md.
AUDITLOG_INCLUDE_TRACKING_MODELS = (
    "costs.Budget",
    "costs.Price",
    # An endpoint's API key (even encrypted) never enters the log: its hint shows that it changed.
    {"model": "costs.ModelEndpoint", "exclude_fields": ["api_key_encrypted"]},
    # The secret's digest never enters the log; last use is not a setting (it changes on every request).
    {"model": "accounts.ApiKey", "exclude_fields": ["secret_hash", "last_used_at"]},
    "accounts.Membership",
)

ROOT_URLCONF = "apps.config.urls"
WSGI_APPLICATION = "apps.config.wsgi.application"
ASGI_APPLICATION = "apps.config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "apps.accounts.context_processors.active_team",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'parsimony.sqlite3'}"), base_dir=BASE_DIR
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Login throttling (django-axes): PARSIMONY_LOGIN_FAILURE_LIMIT failed logins of one username from one
# address lock that pair out (HTTP 429) for PARSIMONY_LOGIN_LOCKOUT_MIN minutes, on /login/ and /admin/.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("PARSIMONY_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("PARSIMONY_LOGIN_LOCKOUT_MIN", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
USE_I18N = True
USE_TZ = True
TIME_ZONE = "UTC"
# Budget periods (day / week / month) reset at midnight in this zone.
PARSIMONY_BUDGET_TIMEZONE = env_str("PARSIMONY_BUDGET_TIMEZONE", "UTC")

STATIC_URL = "static/"
STATIC_ROOT = env_path("STATIC_ROOT", VAR_DIR / "staticfiles")
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if PRODUCTION
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}
# Without collectstatic (the embedded `make run`), whitenoise serves straight from the finders.
WHITENOISE_USE_FINDERS = not PRODUCTION
MEDIA_ROOT = DATA_ROOT / "uploads"

# --- Background work -------------------------------------------------------------------------
# Unset broker: tasks run in-process on background threads (embedded default).
# Set: tasks go to real Celery workers on the named queues.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
CELERY_TASK_ALWAYS_EAGER = False
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3300, minimum=1)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 3600, minimum=1)
# Redis redelivers an unacknowledged task after this many seconds; it must exceed the time limit (a
# running task is not redelivered). A dead worker's job is recovered sooner by the reaper (heartbeats,
# below): this redelivery is only its backstop, and a claim skips a job that is alive elsewhere.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 300}
# The Celery app that jobs are sent through, by dotted path: apps/ names it rather than importing
# workers/ (in-process mode looks the task up in its registry and runs it here).
PARSIMONY_CELERY_APP = "workers.celery.app"
# In-process mode: run tasks synchronously in the caller (tests) instead of on a thread.
PARSIMONY_INPROCESS_SYNC = env_bool("PARSIMONY_INPROCESS_SYNC", False)
# Recovery after a worker dies (docs/reliability.md): a running job's worker beats its heartbeat (and
# extends its holds) every PARSIMONY_JOB_HEARTBEAT_S; the reaper (beat task core.reap_jobs, every
# PARSIMONY_JOB_REAP_EVERY_S) redelivers or fails a job whose heartbeat is older than
# PARSIMONY_JOB_STALE_AFTER_S; an idempotent kind is redelivered while attempts < PARSIMONY_JOB_MAX_ATTEMPTS.
PARSIMONY_JOB_HEARTBEAT_S = env_float("PARSIMONY_JOB_HEARTBEAT_S", 15.0)
PARSIMONY_JOB_STALE_AFTER_S = env_int("PARSIMONY_JOB_STALE_AFTER_S", 60, minimum=2)
PARSIMONY_JOB_REAP_EVERY_S = env_float("PARSIMONY_JOB_REAP_EVERY_S", 30.0)
PARSIMONY_JOB_MAX_ATTEMPTS = env_int("PARSIMONY_JOB_MAX_ATTEMPTS", 3, minimum=1)
# A bulk job run as a provider batch (apps/bulk/provider_batch.py) polls the provider this often, waiting
# queued in between (its holds kept alive that long).
PARSIMONY_PROVIDER_BATCH_POLL_S = env_float("PARSIMONY_PROVIDER_BATCH_POLL_S", 60.0)
# An ingestion embeds on the gpu queue in groups of whole documents holding at least this many chunks,
# queued again behind other jobs between groups, so one long ingestion never holds the gpu worker for
# long (docs/reliability.md, "Fairness and queues").
PARSIMONY_INGEST_EMBED_GROUP_CHUNKS = env_int("PARSIMONY_INGEST_EMBED_GROUP_CHUNKS", 512, minimum=1)
# torch threads per worker process: 1 keeps a 2-core machine responsive (see docs/operations.md).
PARSIMONY_TORCH_THREADS = env_int("PARSIMONY_TORCH_THREADS", 1, minimum=1)
PARSIMONY_MODEL_WALL_TIME_S = env_float("PARSIMONY_MODEL_WALL_TIME_S", 120.0)
# The answer-quality check's contrastive grounding prefill (docs/quality.md): one short metered prefill of
# the question-only prompt and the answer per local generation, a signal of the support score.
PARSIMONY_QUALITY_GROUNDING = env_bool("PARSIMONY_QUALITY_GROUNDING", False)
# The most prompt tokens one request may send a model, whatever its context window (apps.costs.tokens.prompt_check).
PARSIMONY_MAX_PROMPT_TOKENS = env_int("PARSIMONY_MAX_PROMPT_TOKENS", 32_768, minimum=1)
# Disk budget of the superposition KV store under DATA_ROOT/kv-cache (LRU eviction beyond it).
PARSIMONY_KV_CACHE_MAX_BYTES = env_int("PARSIMONY_KV_CACHE_MAX_BYTES", 2 * 1024**3, minimum=0)
# Corpora: the upload size limit (bytes) and the embedding model new corpora use.
PARSIMONY_MAX_UPLOAD_BYTES = env_int("PARSIMONY_MAX_UPLOAD_BYTES", 50_000_000, minimum=1)
# Request bodies (413 before they are read; a file over its limit is stopped while it streams in),
# and JSON bodies' size and nesting (400): apps/core/request_limits.py, apps/core/bounded_json.py.
PARSIMONY_MAX_REQUEST_BYTES = env_int("PARSIMONY_MAX_REQUEST_BYTES", 200_000_000, minimum=1)
PARSIMONY_MAX_JSON_BYTES = env_int("PARSIMONY_MAX_JSON_BYTES", 5_000_000, minimum=1)
# Django's own limit on a body read whole (form fields, JSON) is the same number.
DATA_UPLOAD_MAX_MEMORY_SIZE = PARSIMONY_MAX_JSON_BYTES
PARSIMONY_MAX_JSON_DEPTH = env_int("PARSIMONY_MAX_JSON_DEPTH", 64, minimum=2)
FILE_UPLOAD_HANDLERS = [
    "apps.core.request_limits.UploadLimitHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Parsing uploaded documents: in a child process with this address-space limit and wall time,
# and zip-based formats (.docx) refused when they inflate past a size or a ratio (workers/ingest/isolation.py).
PARSIMONY_PARSE_MEMORY_BYTES = env_int("PARSIMONY_PARSE_MEMORY_BYTES", 2_000_000_000, minimum=100_000_000)
PARSIMONY_PARSE_TIMEOUT_S = env_float("PARSIMONY_PARSE_TIMEOUT_S", 120.0)
PARSIMONY_PARSE_MAX_INFLATED_BYTES = env_int("PARSIMONY_PARSE_MAX_INFLATED_BYTES", 200_000_000, minimum=1)
PARSIMONY_PARSE_MAX_INFLATE_RATIO = env_int("PARSIMONY_PARSE_MAX_INFLATE_RATIO", 100, minimum=2)
PARSIMONY_DEFAULT_EMBEDDING_MODEL = env_str("PARSIMONY_DEFAULT_EMBEDDING_MODEL", "all-MiniLM-L6-v2")

# The API-key rate limit counts in this cache: Redis, required in production (apps/api/checks.py), since
# a per-process cache lets each of N web processes allow the full rate.
CACHE_URL = env_str("CACHE_URL")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
        if CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- REST API --------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["apps.api.permissions.IsTeamMember"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "apps.api.errors.api_exception_handler",
    # Request bodies are JSON (size and depth bounded); only the document upload takes multipart.
    "DEFAULT_PARSER_CLASSES": ["apps.api.parsers.BoundedJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["apps.api.throttling.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"api_key": env_str("PARSIMONY_API_KEY_RATE", "600/min")},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Parsimony API",
    "DESCRIPTION": "Cost-aware RAG and agents: corpora, pipelines, queries, usage and budgets.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "apps.api.schema.add_error_responses",
        "apps.api.schema.tag_by_resource",
    ],
    # Two request fields are called "mode": a query's (sync/async) and a bulk job's (direct/provider batch).
    "ENUM_NAME_OVERRIDES": {"RunModeEnum": ["sync", "async"], "BulkModeEnum": ["direct", "provider_batch"]},
}

# --- Mail (budget alerts) ----------------------------------------------------------------------
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend" if PRODUCTION else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "parsimony@localhost")

# --- Security ----------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Secure cookies follow the redirect unless set: SECURE_SSL_REDIRECT=0 alone is the plain-http test
    # mode (log in over http://127.0.0.1); behind a TLS proxy keep the redirect or set these to 1.
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", SECURE_SSL_REDIRECT)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", SECURE_SSL_REDIRECT)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)

# Content-Security-Policy (django-csp): scripts and styles from this site only, no inline scripts or
# event handlers (static/js/parsimony.js binds them); inline style attributes stay allowed (meters,
# the admin's charts). The API doc pages relax styles and workers for their bundles (apps/api/urls.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# The device a worker advertises (and is priced at): blank detects it (cuda when torch sees a GPU).
# Reservations price local compute at the device of the slowest live worker (apps.costs.cost_model).
PARSIMONY_WORKER_DEVICE = env_str("PARSIMONY_WORKER_DEVICE", "")
if PARSIMONY_WORKER_DEVICE not in {"", "cpu", "cuda"}:
    raise ImproperlyConfiguredEnv(f"PARSIMONY_WORKER_DEVICE={PARSIMONY_WORKER_DEVICE!r}: use 'cpu', 'cuda' or blank")
# A worker profile not refreshed (heartbeat) for this long is ignored by the cost model.
PARSIMONY_WORKER_PROFILE_TTL_S = env_float("PARSIMONY_WORKER_PROFILE_TTL_S", 300.0)
# Savings: the share of pipeline queries (0..1) that also run the naive pipeline for real (a "shadow"
# billed to the operator team) to measure the baseline the savings claim; 1.0 in the benchmark.
PARSIMONY_SHADOW_BASELINE = env_float("PARSIMONY_SHADOW_BASELINE", 0.0)
if not 0.0 <= PARSIMONY_SHADOW_BASELINE <= 1.0:
    raise ImproperlyConfiguredEnv(f"PARSIMONY_SHADOW_BASELINE={PARSIMONY_SHADOW_BASELINE!r}: use a share from 0 to 1")
# The team (by slug, created on demand) that pays for shadow baselines, with its own budgets.
PARSIMONY_OPERATOR_TEAM = env_str("PARSIMONY_OPERATOR_TEAM", "operator")
# Synchronous API queries wait this long before answering 202 with the job to poll.
PARSIMONY_SYNC_QUERY_TIMEOUT_S = env_float("PARSIMONY_SYNC_QUERY_TIMEOUT_S", 120.0)

# --- Answer cache (docs/cache.md) -------------------------------------------------------------------
# Per-team answers reused for repeated and same-intent questions; a pipeline or a request can opt out.
PARSIMONY_ANSWER_CACHE = env_bool("PARSIMONY_ANSWER_CACHE", True)
# Entries per team (a team's own limit overrides it: answer_cache.TeamCacheSettings), and the policy
# that picks what leaves when a team is full: lru, gdsf (dollars-weighted) or lec (least expected cost).
PARSIMONY_ANSWER_CACHE_MAX_ENTRIES = env_int("PARSIMONY_ANSWER_CACHE_MAX_ENTRIES", 2000, minimum=1)
PARSIMONY_ANSWER_CACHE_POLICY = env_str("PARSIMONY_ANSWER_CACHE_POLICY", "gdsf")
if PARSIMONY_ANSWER_CACHE_POLICY not in {"lru", "gdsf", "lec"}:
    raise ImproperlyConfiguredEnv(
        f"PARSIMONY_ANSWER_CACHE_POLICY={PARSIMONY_ANSWER_CACHE_POLICY!r}: use lru, gdsf or lec"
    )
# The error bound δ of a semantic hit, and the least cosine similarity a candidate needs at all.
PARSIMONY_ANSWER_CACHE_ERROR_BOUND = env_float("PARSIMONY_ANSWER_CACHE_ERROR_BOUND", 0.05)
PARSIMONY_ANSWER_CACHE_MIN_SIMILARITY = env_float("PARSIMONY_ANSWER_CACHE_MIN_SIMILARITY", 0.80)
if not (0.0 < PARSIMONY_ANSWER_CACHE_ERROR_BOUND < 1.0 and 0.0 < PARSIMONY_ANSWER_CACHE_MIN_SIMILARITY <= 1.0):
    raise ImproperlyConfiguredEnv("PARSIMONY_ANSWER_CACHE_ERROR_BOUND must be in (0, 1) and "
                                  "PARSIMONY_ANSWER_CACHE_MIN_SIMILARITY in (0, 1]")

# --- Agents ------------------------------------------------------------------------------------
# `http` tools: the transport timeout and the largest response read (hosts: the admin's allow-list).
PARSIMONY_AGENT_HTTP_TIMEOUT_S = env_float("PARSIMONY_AGENT_HTTP_TIMEOUT_S", 10.0)
PARSIMONY_AGENT_HTTP_MAX_BYTES = env_int("PARSIMONY_AGENT_HTTP_MAX_BYTES", 1_000_000, minimum=1)
# `http` tools never connect to private, loopback, link-local (cloud metadata) or other non-public
# addresses, whatever their host resolves to, except these: addresses, networks (CIDR) or exact host
# names, comma-separated (workers/runtime/net_guard.py; docs/operations.md#outbound-connections).
PARSIMONY_AGENT_HTTP_ALLOWED_PRIVATE_NETWORKS = env_private_networks("PARSIMONY_AGENT_HTTP_ALLOWED_PRIVATE_NETWORKS")

# --- Secrets at rest (model endpoints' API keys, apps/core/secrets.py; docs/operations.md) ---------
# The key API keys are encrypted under (Fernet, HKDF-derived); blank: SECRET_KEY. Rotation: move the
# old value into PARSIMONY_SECRETS_KEY_PREVIOUS (comma-separated), then run `manage.py rotate_secrets`.
PARSIMONY_SECRETS_KEY = env_str("PARSIMONY_SECRETS_KEY", "") or ""
PARSIMONY_SECRETS_KEY_PREVIOUS = env_list("PARSIMONY_SECRETS_KEY_PREVIOUS", [])
# A model endpoint's "Test connection": the longest it may take (seconds).
PARSIMONY_ENDPOINT_TEST_TIMEOUT_S = env_float("PARSIMONY_ENDPOINT_TEST_TIMEOUT_S", 10.0)
# A team's own model endpoints (not the operator's global ones) never connect to private, loopback,
# link-local (cloud metadata) or other non-public addresses, except these: addresses, networks (CIDR)
# or exact host names, comma-separated — e.g. "10.0.5.0/24,llm.internal" for a self-hosted vLLM.
PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS = env_private_networks("PARSIMONY_ENDPOINT_ALLOWED_PRIVATE_NETWORKS")
