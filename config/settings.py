"""Django settings. Everything that differs between machines comes from the environment.

Defaults are the embedded demo: SQLite in ``var/`` and Celery tasks run in-process, so the
platform starts with no PostgreSQL and no Redis. Production sets ``DATABASE_URL``,
``CELERY_BROKER_URL``, ``SECRET_KEY``, ``DEBUG=0`` and ``ALLOWED_HOSTS``.
"""

import json
import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PAIRWISE_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

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
    "annotation_app",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
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
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "annotation_app.api.errors.exception_handler",
    # `?format=` names the export format (canonical | trl); renderers are chosen by Accept.
    "URL_FORMAT_OVERRIDE": None,
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

# Celery: an empty broker URL means the embedded default, tasks run in the calling process.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
# A message a worker took but never acknowledged (it died) is delivered again after the
# visibility timeout; keep it above the longest task. JSON, e.g. {"visibility_timeout": 7200}.
CELERY_BROKER_TRANSPORT_OPTIONS = json.loads(
    os.environ.get("CELERY_BROKER_TRANSPORT_OPTIONS", "") or '{"visibility_timeout": 3600}'
)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "model_worker.tasks.generate_*": {"queue": "generation"},
    "model_worker.tasks.train_*": {"queue": "training"},
    "annotation_app.tasks.train_*": {"queue": "training"},
}

# Without a broker, generation runs in a background thread of the web process (the demo).
PAIRWISE_EAGER_IN_THREAD = env_bool("PAIRWISE_EAGER_IN_THREAD", True)
# The policy to sample from when none is registered: a model directory or a hub id.
PAIRWISE_POLICY = os.environ.get("PAIRWISE_POLICY", "")
# Training runs write here: each run's frozen data export and the model it trains
# (``run-<id>/``). Workers on the ``training`` queue write it and generation workers read the
# models from it, so on several machines it must be shared storage mounted at the same path.
PAIRWISE_TRAINING_DIR = Path(os.environ.get("PAIRWISE_TRAINING_DIR", VAR_DIR / "training"))
# A running training run silent this long (no progress write) lost its worker: the task,
# delivered again, takes it over and resumes from its last checkpoint.
PAIRWISE_TRAINING_STALL_SECONDS = int(os.environ.get("PAIRWISE_TRAINING_STALL_SECONDS", "900"))
# Training runs checkpoint every this many steps (a run's config may say otherwise).
PAIRWISE_TRAINING_CHECKPOINT_EVERY = int(os.environ.get("PAIRWISE_TRAINING_CHECKPOINT_EVERY", "50"))

# Annotation defaults.
PAIRWISE_LEASE_MINUTES = int(os.environ.get("PAIRWISE_LEASE_MINUTES", "30"))
PAIRWISE_MAX_IMPORT_ERRORS = 50

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # In-process (demo) tasks would log each result in full, generated texts included.
        "celery.app.trace": {"level": "WARNING" if CELERY_TASK_ALWAYS_EAGER else "INFO"},
    },
}
