"""Django settings. Everything that differs between machines comes from the environment.

``PAIRWISE_ENV`` picks the defaults: ``production`` (when unset) is secure by default: DEBUG off,
``SECRET_KEY`` required, HTTPS only (redirect, secure cookies, HSTS). ``demo`` (``make demo``) is
served on http://127.0.0.1:8000 with DEBUG on and its own key, made once in ``var/secret_key``.
Either way SQLite in ``var/`` and in-process Celery tasks are the defaults, so the platform starts
with no PostgreSQL and no Redis; production sets ``DATABASE_URL``, ``CELERY_BROKER_URL``,
``SECRET_KEY`` and ``ALLOWED_HOSTS``.
"""

import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PAIRWISE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def env_rate(name: str, default: str) -> str | None:
    """A DRF throttle rate such as ``20/minute``; ``off`` (or empty) means no limit."""
    value = os.environ.get(name, default).strip()
    return None if value.lower() in {"", "off", "none", "0"} else value


ENVIRONMENTS = ("production", "demo")
PAIRWISE_ENV = os.environ.get("PAIRWISE_ENV", "").strip().lower() or "production"
if PAIRWISE_ENV not in ENVIRONMENTS:
    raise ImproperlyConfigured(
        f"PAIRWISE_ENV={PAIRWISE_ENV!r} is not known: use production (the default) or demo"
    )
IS_DEMO = PAIRWISE_ENV == "demo"


def _stored_key(path: Path) -> str | None:
    """The key in ``path``: None if there is no file, empty if the file is."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def demo_secret_key(path: Path) -> str:
    """The demo's own key: generated on first use (readable by its owner only), then reused.

    The key file appears whole or not at all: the key is written to a temporary file first,
    then linked into place, which fails if another process put its key there first (both
    then use that one). An empty file (an older version crashed while writing it) counts as
    none and is replaced.
    """
    stored = _stored_key(path)
    if stored:
        return stored
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # 0600
    try:
        with os.fdopen(descriptor, "w") as key_file:
            key_file.write(get_random_secret_key() + "\n")
            key_file.flush()
            os.fsync(key_file.fileno())
        if stored is None:
            os.link(temporary, path)
        else:
            os.replace(temporary, path)  # the empty file
    except FileExistsError:
        pass  # another process was first: its key is the key
    finally:
        Path(temporary).unlink(missing_ok=True)
    return _stored_key(path) or ""


DEBUG = env_bool("DEBUG", IS_DEMO)
SECRET_KEY = os.environ.get("SECRET_KEY", "").strip()
if not SECRET_KEY:
    if not IS_DEMO:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production (PAIRWISE_ENV unset or production) needs a long "
            "random SECRET_KEY in the environment, made once and kept secret, e.g. "
            "SECRET_KEY=$(python -c 'from django.core.management.utils import "
            "get_random_secret_key as k; print(k())'). For the local demo set PAIRWISE_ENV=demo "
            "(make demo does), which makes its own key in var/secret_key."
        )
    SECRET_KEY = demo_secret_key(VAR_DIR / "secret_key")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# HTTPS. Production is served over HTTPS only (directly, or behind a proxy that terminates TLS);
# the demo on plain http://127.0.0.1:8000. PAIRWISE_HTTPS=0 serves production over plain HTTP
# (e.g. docker compose on localhost); each Django setting below may be set on its own too.
PAIRWISE_HTTPS = env_bool("PAIRWISE_HTTPS", not IS_DEMO)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PAIRWISE_HTTPS)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PAIRWISE_HTTPS)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PAIRWISE_HTTPS)
# Browsers remember for a year to use HTTPS only, on every subdomain too. Set
# SECURE_HSTS_INCLUDE_SUBDOMAINS=0 when a subdomain is still served over plain HTTP.
SECURE_HSTS_SECONDS = int(
    os.environ.get("SECURE_HSTS_SECONDS", 31_536_000 if PAIRWISE_HTTPS else 0)
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PAIRWISE_HTTPS)
# Preloading asks browser makers to ship the domain as HTTPS-only, for every subdomain and for
# months after a change of mind: the domain's owner decides, so it is opt-in. Off by that
# choice, check --deploy's reminder (security.W021) is silenced.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]


def proxy_ssl_header(value: str) -> tuple[str, str] | None:
    """``SECURE_PROXY_SSL_HEADER``: off unless set, as only a proxy that sets the header itself
    (and strips it from clients) makes it trustworthy. ``1`` means ``X-Forwarded-Proto``."""
    value = value.strip()
    if value.lower() in {"", "0", "false", "no", "off"}:
        return None
    if value.lower() in {"1", "true", "yes", "on"}:
        value = "X-Forwarded-Proto"
    name = value.upper().replace("-", "_")
    return (name if name.startswith("HTTP_") else f"HTTP_{name}", "https")


SECURE_PROXY_SSL_HEADER = proxy_ssl_header(os.environ.get("SECURE_PROXY_SSL_HEADER", ""))
# Reverse proxies in front of the web processes: the client's address is then read from
# X-Forwarded-For, as that many proxies appended it (throttles and login lockouts count by it).
PAIRWISE_PROXY_COUNT = int(os.environ.get("PAIRWISE_PROXY_COUNT", "0"))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "axes",
    "annotation_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "annotation_app.middleware.RefuseNulInAdminParameters",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend_templates" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'pairwise.sqlite3'}"),
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The demo writes from a generation thread too: wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30
elif os.environ.get("DB_PREPARED_STATEMENTS", "1") == "1":
    # PostgreSQL: parameters bound by the server, so that psycopg prepares a statement run five
    # times on a connection and PostgreSQL stops parsing and planning it anew: 40 % of its CPU
    # in the annotation loop (bench/annotation_loop.py). DB_PREPARED_STATEMENTS=0 behind a
    # pooler in transaction mode (PgBouncer before 1.21), which cannot keep them.
    # (Django leaves psycopg's preparing off by default; it needs the server's binding.)
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=5
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# django-axes first: it refuses a locked-out login before any password is checked. Then
# Django's ModelBackend with each user's permissions cached (annotation_app/auth_cache.py).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "annotation_app.auth_cache.CachedPermissionsBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "frontend_templates" / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", VAR_DIR / "static"))
# SQLite and collectstatic write here; WhiteNoise warns when the folder is missing.
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
# Uncompressed, unhashed storage keeps `runserver` and the test suite free of a collectstatic step.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    # Token first: an anonymous API request gets 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "annotation_app.auth_cache.CachedTokenAuthentication",  # DRF's, its lookups cached
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # drf-spectacular's, documenting each operation's error responses in the one error shape.
    "DEFAULT_SCHEMA_CLASS": "annotation_app.api.schema.AutoSchema",
    # DRF's parsers; the JSON one answers a body nested too deeply with a 400.
    "DEFAULT_PARSER_CLASSES": [
        "annotation_app.api.fields.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "annotation_app.api.errors.exception_handler",
    # `?format=` names the export format (canonical | trl); renderers are chosen by Accept.
    "URL_FORMAT_OVERRIDE": None,
    # Per client address (anonymous), per user, and for the token endpoint per address,
    # counted in the cache (CACHES): shared by every web process with CACHE_URL set.
    "DEFAULT_THROTTLE_CLASSES": [
        "annotation_app.api.throttles.AnonRateThrottle",
        "annotation_app.api.throttles.UserRateThrottle",
        "annotation_app.api.throttles.ScopedRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_rate("PAIRWISE_THROTTLE_ANON", "60/minute"),
        "user": env_rate("PAIRWISE_THROTTLE_USER", "1200/minute"),
        "auth_token": env_rate("PAIRWISE_THROTTLE_TOKEN", "10/minute"),
    },
    "NUM_PROXIES": PAIRWISE_PROXY_COUNT,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Pairwise API",
    "DESCRIPTION": "Batches, annotation tasks, submissions and preference exports.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Batches and training runs both have a kind and a status, with different choices.
    "ENUM_NAME_OVERRIDES": {
        "TrainingRunKindEnum": "annotation_app.models.TrainingRun.Kind",
        "TrainingRunStatusEnum": "annotation_app.models.TrainingRun.Status",
    },
}


def cache_from_url(url: str) -> dict:
    """``CACHES["default"]`` from ``CACHE_URL``: ``redis://`` or ``rediss://`` (Django's Redis
    cache, shared by every process), or empty for each process's own memory (the demo's)."""
    url = url.strip()
    if not url:
        return {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    if url.split("://", 1)[0] in {"redis", "rediss"}:
        return {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}
    raise ImproperlyConfigured(
        f"CACHE_URL={url!r} is not supported: use redis://host:port/db (or rediss://), or "
        "leave it empty for a cache in each process's memory"
    )


# API throttle counts live in the cache: with several web processes, set CACHE_URL to a Redis
# they share, or each process counts on its own and N processes allow N times the rate.
CACHES = {"default": cache_from_url(os.environ.get("CACHE_URL", ""))}
# API tokens' users and users' permissions are cached too (annotation_app/auth_cache.py), and
# dropped when signals show a change; this bounds how long a change no signal shows (an
# update() in bulk, another process without a shared CACHE_URL) may go unseen. 0: not cached.
PAIRWISE_AUTH_CACHE_SECONDS = int(os.environ.get("PAIRWISE_AUTH_CACHE_SECONDS", "60"))

# Login form and admin login (django-axes): after this many failed sign-ins for one user name
# from one address, that pair is locked out for the cool-off time; the attempts are kept in the
# database, so every web process sees them. The token endpoint counts too (and is throttled).
AXES_FAILURE_LIMIT = int(os.environ.get("PAIRWISE_LOGIN_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("PAIRWISE_LOGIN_COOLOFF_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False  # no banner in every command's output; failures are still logged
# The same client address as the API throttles (PAIRWISE_PROXY_COUNT).
AXES_CLIENT_IP_CALLABLE = "annotation_app.api.throttles.client_address"

# Content Security Policy (django-csp): scripts, styles, images and requests from this site
# only, inline script or style only with the page's nonce, no remote images (model text
# cannot make the browser fetch anything), no framing.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF, NONCE],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# Celery: an empty broker URL means the embedded default, tasks run in the calling process.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
# A message a worker took but never acknowledged (it died) is delivered again after the
# visibility timeout; keep it above the longest task (training). Any worker restores any
# worker's messages, so it is one value for every queue: generation has its own, shorter bound
# (PAIRWISE_GENERATION_TIMEOUT_SECONDS). Socket timeouts keep a publish from hanging on a broker
# that vanished without closing its connections. JSON, merged over these defaults, e.g.
# {"visibility_timeout": 7200}.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    "socket_timeout": 10,
    "socket_connect_timeout": 5,
    **json.loads(os.environ.get("CELERY_BROKER_TRANSPORT_OPTIONS", "") or "{}"),
}
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "model_worker.tasks.generate_*": {"queue": "generation"},
    "model_worker.tasks.train_*": {"queue": "training"},
}

# Without a broker, generation runs in a background thread of the web process (the demo).
PAIRWISE_EAGER_IN_THREAD = env_bool("PAIRWISE_EAGER_IN_THREAD", True)
# Dispatch goes through an outbox (annotation_app/services/outbox.py): work for the workers is
# recorded with the data it is about and relayed to the broker after the commit, then again by
# `manage.py relay_outbox --loop` (every PAIRWISE_RELAY_INTERVAL_SECONDS) until it is answered.
PAIRWISE_RELAY_INTERVAL_SECONDS = float(os.environ.get("PAIRWISE_RELAY_INTERVAL_SECONDS", "15"))
# Generation's own bound: a generation task unanswered this long was lost (with the broker's
# queue, or with a killed worker) and is sent again; workers discard copies older than this
# (Celery ``expires``), so the long visibility timeout never brings back a stale one. Keep it
# above a generation task's duration, retries included.
PAIRWISE_GENERATION_TIMEOUT_SECONDS = int(
    os.environ.get("PAIRWISE_GENERATION_TIMEOUT_SECONDS", "300")
)
# About this many generation tasks wait on the broker at once; the rest wait in the outbox and
# are sent as answers come in, so that none expires in a long queue. The rule:
#   MAX_IN_FLIGHT × a task's duration ÷ generation worker processes < TIMEOUT_SECONDS,
# with room to spare. The default fits one GPU process (docker compose's gpu profile) taking
# about 60 s for a task of 64 requests: 4 × 60 ÷ 1 = 240 s < 300 s. Raise it with more
# processes or faster tasks.
PAIRWISE_GENERATION_MAX_IN_FLIGHT = int(os.environ.get("PAIRWISE_GENERATION_MAX_IN_FLIGHT", "4"))
# A message sent this many times without an answer is given up: its comparisons are marked
# failed with the reason (an admin may retry them), its queued training run failed.
PAIRWISE_OUTBOX_MAX_ATTEMPTS = int(os.environ.get("PAIRWISE_OUTBOX_MAX_ATTEMPTS", "5"))
# Answered outbox messages are deleted after this many days (by relay_outbox).
PAIRWISE_OUTBOX_RETENTION_DAYS = float(os.environ.get("PAIRWISE_OUTBOX_RETENTION_DAYS", "7"))
# The policy to sample from when none is registered: a model directory or a hub id.
PAIRWISE_POLICY = os.environ.get("PAIRWISE_POLICY", "")
# The shared assets beside the repository (models, data sets): the demo's policy falls back to
# their stories260K when SmolLM2 is not installed.
PAIRWISE_ASSETS = Path(os.environ.get("PAIRWISE_ASSETS", BASE_DIR.parent / "shared"))
# Training runs write here: each run's frozen data export and the model it trains
# (``run-<id>/``). Workers on the ``training`` queue write it and generation workers read the
# models from it, so on several machines it must be shared storage mounted at the same path.
PAIRWISE_TRAINING_DIR = Path(os.environ.get("PAIRWISE_TRAINING_DIR", VAR_DIR / "training"))
# A running training run silent this long (no progress write) lost its worker: the task,
# delivered again, takes it over and resumes from its last checkpoint. A queued run that no
# worker picked up this long is sent again by the relay (its extra copies are skipped).
PAIRWISE_TRAINING_STALL_SECONDS = int(os.environ.get("PAIRWISE_TRAINING_STALL_SECONDS", "900"))
# Training runs checkpoint every this many steps (a run's config may say otherwise).
PAIRWISE_TRAINING_CHECKPOINT_EVERY = int(os.environ.get("PAIRWISE_TRAINING_CHECKPOINT_EVERY", "50"))

# Annotation defaults.
PAIRWISE_LEASE_MINUTES = int(os.environ.get("PAIRWISE_LEASE_MINUTES", "30"))
PAIRWISE_MAX_IMPORT_ERRORS = 50
# Import limits, enforced while a file is read (a gzip file counts uncompressed): past either,
# reading stops and nothing is imported, so that a compression bomb costs no more than this.
PAIRWISE_IMPORT_MAX_BYTES = int(os.environ.get("PAIRWISE_IMPORT_MAX_BYTES", str(256 * 2**20)))
PAIRWISE_IMPORT_MAX_RECORDS = int(os.environ.get("PAIRWISE_IMPORT_MAX_RECORDS", "200000"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # A refused request (4xx) is logged as one line, without a traceback. The filter sits on
    # the handler, for records of every logger (django.security.DisallowedHost,
    # django.security.TooManyFieldsSent, …: a filter on the parent logger django.security
    # would never see its children's records), and on django.request, for any other handler.
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["client_errors_without_traceback"],
        }
    },
    "filters": {
        "client_errors_without_traceback": {"()": "config.log_filters.ClientErrorsWithoutTraceback"}
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "django.request": {"filters": ["client_errors_without_traceback"]},
        # In-process (demo) tasks would log each result in full, generated texts included.
        "celery.app.trace": {"level": "WARNING" if CELERY_TASK_ALWAYS_EAGER else "INFO"},
        # django-axes: failed sign-ins and lockouts (warnings), not its bookkeeping.
        "axes": {"level": "WARNING"},
    },
}
