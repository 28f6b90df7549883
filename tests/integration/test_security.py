"""Secure by default: production settings unless told otherwise, a Content Security Policy,
model text that cannot make a browser fetch anything, throttled and locked-out sign-ins, and
workers' errors (which may name a model) kept from annotators."""

from __future__ import annotations

import os
import re
import runpy
import stat
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
import redis
from axes.models import AccessAttempt
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key
from django.utils import timezone
from rest_framework.test import APIClient

from annotation_app.api.errors import error_body
from annotation_app.models import Comparison
from annotation_app.roles import Role
from annotation_app.services.assignment import next_assignment
from annotation_app.services.generation_errors import NEUTRAL_GENERATION_ERROR
from annotation_app.templatetags.pairwise_text import render_markdown
from config import settings as settings_module
from tests.conftest import PASSWORD, ROOT
from tests.workers import KEY_PREFIX, SCRATCH_REDIS_URL, _flushed

SETTINGS_FILE = ROOT / "config" / "settings.py"
# What config/settings.py reads that these tests set or must not inherit from the shell.
SETTINGS_ENV = (
    "PAIRWISE_ENV",
    "DEBUG",
    "SECRET_KEY",
    "PAIRWISE_HTTPS",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_PROXY_SSL_HEADER",
    "CACHE_URL",
)


# --- settings: production by default, the demo on request ----------------------------------


@pytest.fixture
def load_settings(monkeypatch, tmp_path):
    """Run config/settings.py afresh with only the given environment (and var/ in tmp_path)."""

    def load(**env: str) -> dict:
        for name in SETTINGS_ENV:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("PAIRWISE_VAR_DIR", str(tmp_path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(SETTINGS_FILE))

    return load


def test_production_is_the_default_and_needs_a_secret_key(load_settings, tmp_path):
    with pytest.raises(ImproperlyConfigured, match="SECRET_KEY is not set.*PAIRWISE_ENV=demo"):
        load_settings()
    assert not (tmp_path / "secret_key").exists()

    production = load_settings(SECRET_KEY="k" * 50)
    assert production["PAIRWISE_ENV"] == "production"
    assert production["DEBUG"] is False
    assert production["SECRET_KEY"] == "k" * 50
    assert production["SESSION_COOKIE_SECURE"] and production["CSRF_COOKIE_SECURE"]
    assert production["SECURE_SSL_REDIRECT"]
    assert production["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert production["SECURE_PROXY_SSL_HEADER"] is None  # trusting a header is opted into
    # Preloading binds the domain's future: its owner opts in (check --deploy's reminder off).
    assert production["SECURE_HSTS_PRELOAD"] is False
    assert production["SILENCED_SYSTEM_CHECKS"] == ["security.W021"]
    preloaded = load_settings(SECRET_KEY="k" * 50, SECURE_HSTS_PRELOAD="1")
    assert preloaded["SECURE_HSTS_PRELOAD"] is True
    assert preloaded["SILENCED_SYSTEM_CHECKS"] == []

    with pytest.raises(ImproperlyConfigured, match="PAIRWISE_ENV='staging' is not known"):
        load_settings(PAIRWISE_ENV="staging", SECRET_KEY="k" * 50)


@pytest.mark.parametrize(
    "value",
    ["HTTP_X_FORWARDED_PROTO", "X-Forwarded-Proto", "1", "true"],
)
def test_the_proxy_ssl_header_is_opt_in(load_settings, value):
    settings = load_settings(SECRET_KEY="k" * 50, SECURE_PROXY_SSL_HEADER=value)
    assert settings["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert (
        load_settings(SECRET_KEY="k" * 50, SECURE_PROXY_SSL_HEADER="0")["SECURE_PROXY_SSL_HEADER"]
        is None
    )


def test_the_demo_makes_its_own_key_once_and_serves_plain_http(load_settings, tmp_path):
    demo = load_settings(PAIRWISE_ENV="demo")
    key_file = tmp_path / "secret_key"
    assert demo["DEBUG"] is True
    assert len(demo["SECRET_KEY"]) >= 50
    assert key_file.read_text().strip() == demo["SECRET_KEY"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_settings(PAIRWISE_ENV="demo")["SECRET_KEY"] == demo["SECRET_KEY"]  # kept
    assert not demo["SESSION_COOKIE_SECURE"] and not demo["CSRF_COOKIE_SECURE"]
    assert not demo["SECURE_SSL_REDIRECT"] and demo["SECURE_HSTS_SECONDS"] == 0

    # DEBUG and SECRET_KEY from the environment win in both environments.
    overridden = load_settings(PAIRWISE_ENV="demo", DEBUG="0", SECRET_KEY="e" * 50)
    assert overridden["DEBUG"] is False and overridden["SECRET_KEY"] == "e" * 50
    assert load_settings(SECRET_KEY="e" * 50, DEBUG="1")["DEBUG"] is True


def test_the_demo_key_file_appears_whole_and_an_empty_one_is_replaced(tmp_path, monkeypatch):
    path = tmp_path / "var" / "secret_key"
    found = []
    make_key = settings_module.get_random_secret_key

    def watched_make_key() -> str:
        # What another process starting at this very moment would read.
        found.append(path.read_text() if path.exists() else None)
        return make_key()

    monkeypatch.setattr(settings_module, "get_random_secret_key", watched_make_key)
    key = settings_module.demo_secret_key(path)
    assert found == [None]  # no empty file while the key is being made
    assert len(key) >= 50 and path.read_text() == key + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert settings_module.demo_secret_key(path) == key

    path.write_text("")  # an older version crashed between creating the file and writing it
    replaced = settings_module.demo_secret_key(path)
    assert len(replaced) >= 50 and replaced != key and path.read_text() == replaced + "\n"
    assert [p.name for p in path.parent.iterdir()] == ["secret_key"]  # no temporary left


def test_demo_processes_starting_together_share_one_key(tmp_path):
    path = tmp_path / "secret_key"
    start = threading.Barrier(8)
    keys = []

    def start_process() -> None:
        start.wait()
        keys.append(settings_module.demo_secret_key(path))

    starting = [threading.Thread(target=start_process) for _ in range(8)]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join(30)
    assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) >= 50
    assert path.read_text() == keys[0] + "\n"


def test_the_cache_is_shared_redis_when_configured(load_settings):
    assert load_settings(SECRET_KEY="k" * 50)["CACHES"]["default"]["BACKEND"] == (
        "django.core.cache.backends.locmem.LocMemCache"  # each process its own
    )
    shared = load_settings(SECRET_KEY="k" * 50, CACHE_URL="redis://cache.internal:6379/2")
    assert shared["CACHES"]["default"] == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://cache.internal:6379/2",
    }
    with pytest.raises(ImproperlyConfigured, match="CACHE_URL='memcached://m:11211' is not"):
        load_settings(SECRET_KEY="k" * 50, CACHE_URL="memcached://m:11211")


def manage_check_deploy(tmp_path, **env: str) -> subprocess.CompletedProcess:
    clean_env = {
        "PATH": os.environ["PATH"],
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PAIRWISE_VAR_DIR": str(tmp_path),
        **env,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_check_deploy_passes_for_production_with_only_the_required_settings(tmp_path):
    required = {
        "SECRET_KEY": get_random_secret_key(),
        "ALLOWED_HOSTS": "pairwise.example.org",
        "DATABASE_URL": "postgres://pairwise@db.example.org:5432/pairwise",
    }
    production = manage_check_deploy(tmp_path, **required)
    assert production.returncode == 0, production.stderr
    # The one silenced: security.W021, HSTS preload, off by choice (opt-in).
    assert "System check identified no issues (1 silenced)." in production.stdout
    preloaded = manage_check_deploy(tmp_path, SECURE_HSTS_PRELOAD="1", **required)
    assert preloaded.returncode == 0, preloaded.stderr
    assert "System check identified no issues (0 silenced)." in preloaded.stdout

    # The same check fails the demo's settings: it does look.
    demo = manage_check_deploy(tmp_path, PAIRWISE_ENV="demo", **required)
    assert demo.returncode != 0
    assert "security.W018" in demo.stderr  # DEBUG
    assert "security.W012" in demo.stderr  # session cookie not secure


# --- Content Security Policy -----------------------------------------------------------------


def csp_of(response) -> dict[str, str]:
    header = response["Content-Security-Policy"]
    return {
        part.split()[0]: " ".join(part.split()[1:])
        for part in (p.strip() for p in header.split(";"))
        if part
    }


@pytest.mark.django_db
def test_every_page_carries_the_content_security_policy(client, annotator, make_batch):
    login = client.get("/login/")
    policy = csp_of(login)
    assert policy["default-src"] == "'self'"
    assert policy["img-src"] == "'self' data:"  # no remote images
    assert policy["script-src"] == "'self'"  # no inline script on this page: no nonce either
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"

    make_batch(comparisons=1)
    client.force_login(annotator)
    home = client.get("/")
    nonce = re.search(r"'nonce-([^']+)'", csp_of(home)["script-src"]).group(1)
    assert f'<script nonce="{nonce}">' in home.content.decode()  # its one inline script
    assert "style=" not in client.get(client.get("/annotate/")["Location"]).content.decode()

    docs = client.get("/api/v1/docs/")
    docs_nonce = re.search(r"'nonce-([^']+)'", csp_of(docs)["style-src"]).group(1)
    assert docs_nonce != nonce  # one per response
    html = docs.content.decode()
    assert f'<style nonce="{docs_nonce}">' in html  # Swagger UI's one inline style
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all(" src=" in tag for tag in scripts)  # no inline script at all
    assert '<script src="/api/v1/docs/?script="></script>' in html
    script = client.get("/api/v1/docs/?script=")
    assert script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle" in script.content.decode()


# --- Markdown images ---------------------------------------------------------------------------


def test_markdown_images_are_links_never_loaded():
    html = render_markdown('Look: ![a "pixel"](http://127.0.0.2:8080/pixel.png?u=1&v=2)')
    assert "<img" not in html
    assert (
        '<a class="md-image" href="http://127.0.0.2:8080/pixel.png?u=1&amp;v=2" '
        'rel="nofollow noopener noreferrer">[image: a &quot;pixel&quot;]</a>'
    ) in html
    # Inside a link the image is its text (a link in a link is not HTML).
    linked = render_markdown("[![logo](http://example.org/logo.png)](http://example.org/)")
    assert '<a href="http://example.org/"><span class="md-image">[image: logo]</span></a>' in linked
    assert "<img" not in render_markdown("![](data:image/png;base64,iVBORw0KGgo=)")


# --- throttling and lockouts -----------------------------------------------------------------


@pytest.fixture
def throttle_rates(settings):
    """Set API throttle rates (the suite runs without); each test starts with fresh counts."""

    def set_rates(**rates: str) -> None:
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {
                **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
                **rates,
            },
        }

    cache.clear()
    yield set_rates
    cache.clear()


@pytest.mark.django_db
def test_the_token_endpoint_is_throttled_per_address(throttle_rates, annotator, make_user):
    throttle_rates(auth_token="3/minute")
    other = make_user(Role.ANNOTATOR)
    client = APIClient()
    for user in (annotator, annotator, other):
        answer = client.post(
            "/api/v1/auth/token/", {"username": user.username, "password": PASSWORD}
        )
        assert answer.status_code == 200, answer.content
    throttled = client.post(
        "/api/v1/auth/token/", {"username": annotator.username, "password": PASSWORD}
    )
    assert throttled.status_code == 429
    body = throttled.json()
    assert body == error_body(body["detail"])
    assert body["detail"].startswith("Request was throttled.")
    assert 0 < int(throttled["Retry-After"]) <= 60
    # Another address is not affected.
    elsewhere = APIClient(REMOTE_ADDR="10.0.0.7").post(
        "/api/v1/auth/token/", {"username": annotator.username, "password": PASSWORD}
    )
    assert elsewhere.status_code == 200


@pytest.mark.django_db
def test_api_users_are_throttled_at_the_user_rate(throttle_rates, annotator):
    throttle_rates(user="2/minute")
    client = APIClient()
    client.force_authenticate(annotator)
    assert [client.get("/api/v1/annotations/").status_code for _ in range(3)] == [200, 200, 429]
    assert set(client.get("/api/v1/annotations/").json()) == {"detail", "errors"}


@pytest.mark.django_db
def test_with_a_shared_cache_every_web_process_counts_the_same_requests(
    throttle_rates, annotator, settings
):
    from django.core.cache.backends.redis import RedisCache

    url = _flushed(SCRATCH_REDIS_URL)
    options = {"KEY_PREFIX": KEY_PREFIX["global_keyprefix"]}
    settings.CACHES = {
        "default": {"BACKEND": f"{RedisCache.__module__}.RedisCache", "LOCATION": url, **options}
    }
    throttle_rates(user="2/minute")
    client = APIClient()
    client.force_authenticate(annotator)
    try:
        assert [client.get("/api/v1/annotations/").status_code for _ in range(2)] == [200, 200]
        # Another web process: a cache of its own over the same Redis sees both requests.
        elsewhere = RedisCache(url, options)
        assert len(elsewhere.get(f"throttle_user_{annotator.pk}")) == 2
        assert client.get("/api/v1/annotations/").status_code == 429
    finally:
        redis.Redis.from_url(url).flushdb()


def sign_in(client, username: str, password: str, path: str = "/login/", **headers):
    return client.post(path, {"username": username, "password": password}, **headers)


@pytest.mark.django_db
def test_failed_sign_ins_lock_the_user_name_out_with_a_page_that_says_so(
    client, annotator, make_user, settings
):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, annotator.username, "wrong").status_code == 200  # form again
    locked = sign_in(client, annotator.username, "wrong")
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Too many failed sign-ins" in page
    assert f"failed {settings.AXES_FAILURE_LIMIT} times" in page and "15 minutes" in page
    # Even the right password is refused while locked out, on the admin's sign-in form too.
    assert sign_in(client, annotator.username, PASSWORD).status_code == 429
    assert sign_in(client, annotator.username, PASSWORD, "/admin/login/").status_code == 429
    assert "_auth_user_id" not in client.session

    # Another user name from the same address (a shared office) may still sign in.
    colleague = make_user(Role.ANNOTATOR)
    assert sign_in(client, colleague.username, PASSWORD).status_code == 302
    client.logout()

    # After the cool-off the right password works again.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert sign_in(client, annotator.username, PASSWORD).status_code == 302
    assert client.session["_auth_user_id"] == str(annotator.pk)


@pytest.mark.django_db
def test_failed_token_requests_lock_out_like_the_sign_in_form(annotator, settings):
    client = APIClient()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        wrong = client.post(
            "/api/v1/auth/token/", {"username": annotator.username, "password": "wrong"}
        )
        assert wrong.status_code == 400
    for password in ("wrong", PASSWORD):  # the failure that locks, then even the right one
        locked = client.post(
            "/api/v1/auth/token/", {"username": annotator.username, "password": password}
        )
        assert locked.status_code == 429
        assert locked.json() == error_body(
            "Too many failed sign-ins for this user name from this address: "
            "try again in 15 minutes."
        )
        assert locked["Retry-After"] == "900"


@pytest.mark.django_db
@pytest.mark.parametrize("forwarded", ["not an address", "", "203.0.113.9:443", "1.2.3.4, x"])
def test_behind_a_proxy_a_malformed_forwarded_address_falls_back_to_the_connection_s(
    client, annotator, settings, forwarded
):
    """X-Forwarded-For comes from the client, with the proxy's part appended: what it says is
    used only if it is an address, or a failed sign-in would be a server error."""
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    refused = sign_in(client, annotator.username, "wrong", HTTP_X_FORWARDED_FOR=forwarded)
    assert refused.status_code == 200  # the form again, with its error
    token = APIClient().post(
        "/api/v1/auth/token/",
        {"username": annotator.username, "password": "wrong"},
        HTTP_X_FORWARDED_FOR=forwarded,
    )
    assert token.status_code == 400
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"127.0.0.1"}


@pytest.mark.django_db
def test_behind_a_proxy_the_forwarded_address_is_the_client_s(client, annotator, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    sign_in(client, annotator.username, "wrong", HTTP_X_FORWARDED_FOR="10.1.1.1, 203.0.113.9")
    assert AccessAttempt.objects.get().ip_address == "203.0.113.9"  # what the proxy appended


# --- workers' errors: details for staff, a neutral message for annotators --------------------

SECRET_ERROR = "OSError: cannot load /models/acme-secret-policy-v9: no config.json"


def failed_assignment(user, make_batch):
    make_batch(comparisons=1)
    assignment = next_assignment(user)
    Comparison.objects.filter(pk=assignment.comparison_id).update(
        status=Comparison.Status.FAILED, generation_error=SECRET_ERROR
    )
    return assignment


@pytest.mark.django_db
def test_annotators_see_a_neutral_message_for_a_failed_generation(client, annotator, make_batch):
    assignment = failed_assignment(annotator, make_batch)
    api = APIClient()
    api.force_authenticate(annotator)
    task = api.get(f"/api/v1/assignments/{assignment.pk}/").json()
    assert task["comparison_status"] == "failed"
    assert task["generation_error"] == NEUTRAL_GENERATION_ERROR
    assert "acme" not in str(task)

    client.force_login(annotator)
    page = client.get(f"/tasks/{assignment.pk}/").content.decode()
    assert NEUTRAL_GENERATION_ERROR in page
    assert "acme" not in page and "OSError" not in page
    # Stored as the worker wrote it, for the admins.
    assert Comparison.objects.get(pk=assignment.comparison_id).generation_error == SECRET_ERROR


@pytest.mark.django_db
def test_staff_see_the_workers_error(client, make_user, make_batch):
    admin_annotating = make_user(Role.ANNOTATOR)
    admin_annotating.groups.add(*make_user(Role.BATCH_ADMIN).groups.all())  # both roles
    assignment = failed_assignment(admin_annotating, make_batch)
    api = APIClient()
    api.force_authenticate(admin_annotating)
    assert api.get(f"/api/v1/assignments/{assignment.pk}/").json()["generation_error"] == (
        SECRET_ERROR
    )
    client.force_login(admin_annotating)
    assert SECRET_ERROR in client.get(f"/tasks/{assignment.pk}/").content.decode()
