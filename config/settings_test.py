"""Settings for the test suite: the real thing, on PostgreSQL.

``DATABASE_URL`` may point anywhere; by default the suite uses the local PostgreSQL server
(pytest-django creates and drops its own ``test_…`` database there).
"""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pairwise")

from .settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
PAIRWISE_EAGER_IN_THREAD = False  # eager generation runs inline, so tests can assert at once
