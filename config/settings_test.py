"""Settings for the test suite: the real thing (production's), on PostgreSQL.

``DATABASE_URL`` may point anywhere; by default the suite uses the local PostgreSQL server
(pytest-django creates and drops its own ``test_…`` database there). What differs from
production: a fixed key, plain HTTP (pytest-django's live server) and no API throttling.
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pairwise")
os.environ["PAIRWISE_ENV"] = "production"  # whatever the shell says: the suite is fixed
# Production refuses to start without a key; the suite's is public and signs nothing real.
os.environ.setdefault("SECRET_KEY", "pairwise-test-suite-key-known-to-everyone-not-a-secret")

from .settings import *  # noqa: E402,F403

DEBUG = False
# pytest-django's live server speaks plain HTTP: no redirect to HTTPS, cookies sent over HTTP.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0
# Every test client comes from one address and the counts live on across tests in the process:
# no throttling, except where a test sets a rate (the throttles read the rates per request).
REST_FRAMEWORK = {  # noqa: F405
    **REST_FRAMEWORK,  # noqa: F405
    "DEFAULT_THROTTLE_RATES": dict.fromkeys(REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]),  # noqa: F405
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
PAIRWISE_EAGER_IN_THREAD = False  # eager generation runs inline, so tests can assert at once
