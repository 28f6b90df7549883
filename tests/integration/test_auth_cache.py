"""Cached token lookups and permissions (annotation_app/auth_cache.py): the annotation loop's
requests skip those queries once warm, and every change that signals show is seen by the very
next request; changes no signal shows last no longer than ``PAIRWISE_AUTH_CACHE_SECONDS``."""

from __future__ import annotations

import hashlib
import pickle
import time
import uuid

import pytest
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation_app.auth_cache import PERMISSIONS_KEY, TOKEN_KEY, VERSION_KEY
from annotation_app.roles import Role

pytestmark = pytest.mark.django_db

NEXT = "/api/v1/tasks/next/"
ANNOTATIONS = "/api/v1/annotations/"
ANNOTATE = "annotation_app.annotate"
AUTH_TABLES = ("authtoken_token", "auth_permission")


def token_client(user) -> tuple[APIClient, Token]:
    token, _ = Token.objects.get_or_create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client, token


def next_task(client: APIClient):
    return client.post(NEXT, {}, format="json")


@pytest.fixture(params=["token", "session"])
def client_of(request):
    """An API client for a user, signed in by token (the annotation loop's way; the permissions
    come with the cached token) or by session (the pages' way; the backend caches them)."""

    def make(user) -> APIClient:
        if request.param == "token":
            return token_client(user)[0]
        client = APIClient()
        client.force_login(user)
        return client

    return make


def auth_queries(captured: CaptureQueriesContext) -> list[str]:
    """The statements that looked up a token or permissions."""
    return [
        query["sql"]
        for query in captured.captured_queries
        if any(table in query["sql"] for table in AUTH_TABLES)
    ]


def role_group(role: Role = Role.ANNOTATOR) -> Group:
    return Group.objects.get(name=role.value)


def annotate_permission() -> Permission:
    return Permission.objects.get(content_type__app_label="annotation_app", codename="annotate")


# --- the steady state -----------------------------------------------------------------------


def test_warm_requests_of_the_loop_look_up_neither_token_nor_permissions(
    annotator, make_batch, monkeypatch
):
    make_batch(comparisons=3)
    client, _ = token_client(annotator)
    with CaptureQueriesContext(connection) as cold:
        task = next_task(client)
    assert task.status_code == 200
    # The first request pays: the token with its user, the user's and their groups' permissions.
    assert len(auth_queries(cold)) == 3

    reads = []
    real_get_many = cache.get_many
    monkeypatch.setattr(cache, "get_many", lambda keys: reads.append(keys) or real_get_many(keys))
    with CaptureQueriesContext(connection) as warm:
        again = next_task(client)
        submitted = client.post(
            ANNOTATIONS,
            {
                "assignment": task.json()["assignment"],
                "preferred": "A",
                "strength": "better",
                "idempotency_key": str(uuid.uuid4()),
            },
            format="json",
        )
    assert again.status_code == 200 and again.json()["assignment"] == task.json()["assignment"]
    assert submitted.status_code == 201, submitted.content
    assert auth_queries(warm) == []
    assert not [q for q in warm.captured_queries if "batch_assigned_" in q["sql"]]
    # A round trip to the cache a request (token, user, permissions), and next-task's batches.
    assert len(reads) == 3


def test_the_cache_holds_neither_the_token_nor_the_password_hash(annotator):
    client, token = token_client(annotator)
    assert next_task(client).status_code == 204
    digest = hashlib.sha256(token.key.encode()).hexdigest()
    stored = pickle.dumps(cache.get(TOKEN_KEY.format(digest=digest)))
    assert annotator.username.encode() in stored  # the user is there…
    assert token.key.encode() not in stored  # …but not the key
    assert annotator.password.encode() not in stored  # nor the password hash

    # The user comes back with the password deferred: read when asked, never overwritten.
    with CaptureQueriesContext(connection):
        response = next_task(client)
    user = response.wsgi_request.user
    assert user.pk == annotator.pk and response.wsgi_request.auth.key == token.key
    assert user.get_deferred_fields() == {"password"}
    user.first_name = "Ada"
    user.save()
    annotator.refresh_from_db()
    assert annotator.first_name == "Ada"
    assert annotator.check_password("test-password-123")


def test_session_requests_use_the_cached_permissions_too(annotator):
    client = APIClient()
    client.force_login(annotator)
    assert next_task(client).status_code == 204
    with CaptureQueriesContext(connection) as warm:
        assert next_task(client).status_code == 204
    assert auth_queries(warm) == []


def test_a_second_check_in_one_request_asks_neither_database_nor_cache(annotator, monkeypatch):
    assert annotator.has_perm(ANNOTATE)
    user = type(annotator).objects.get(pk=annotator.pk)  # a request's own user object
    reads = []
    real_get_many = cache.get_many
    monkeypatch.setattr(cache, "get_many", lambda keys: reads.append(keys) or real_get_many(keys))
    with CaptureQueriesContext(connection) as captured:
        assert user.has_perm(ANNOTATE)
        assert user.has_perm(ANNOTATE)
        assert not user.has_perm("annotation_app.manage_batches")
        assert user.get_all_permissions() == {ANNOTATE}
    assert auth_queries(captured) == []
    assert len(reads) == 1


# --- Django's semantics, kept ---------------------------------------------------------------


def test_inactive_users_have_no_permissions_superusers_all_objects_none(make_user):
    inactive = make_user(Role.BATCH_ADMIN, is_active=False)
    assert not inactive.has_perm("annotation_app.manage_batches")
    assert inactive.get_all_permissions() == set()

    superuser = make_user(None, is_superuser=True)
    everything = {
        f"{app_label}.{codename}"
        for app_label, codename in Permission.objects.values_list(
            "content_type__app_label", "codename"
        )
    }
    assert superuser.get_all_permissions() == everything
    fresh = type(superuser).objects.get(pk=superuser.pk)
    with CaptureQueriesContext(connection) as captured:
        assert fresh.get_all_permissions() == everything  # from the cache
    assert auth_queries(captured) == []

    annotator = make_user(Role.ANNOTATOR)
    assert annotator.has_perm(ANNOTATE)
    assert not annotator.has_perm(ANNOTATE, obj=annotator)  # no object permissions
    assert annotator.get_all_permissions(obj=annotator) == set()


def test_an_unknown_token_and_no_token_are_refused_as_drf_refuses_them():
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    for _ in range(2):  # a refusal is not cached either
        refused = next_task(forged)
        assert refused.status_code == 401
        assert refused["WWW-Authenticate"] == "Token"
        assert refused.json()["detail"] == "Invalid token."
    anonymous = next_task(APIClient())
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"] == "Token"


# --- invalidation: each change is seen by the next request ----------------------------------


def test_losing_the_role_takes_api_access_away_at_once(make_user, client_of):
    annotator = make_user(Role.ANNOTATOR)
    client = client_of(annotator)
    assert next_task(client).status_code == 204
    annotator.groups.remove(role_group())
    assert next_task(client).status_code == 403

    # The same from the group's side, and by clearing.
    other = make_user(Role.ANNOTATOR)
    other_client = client_of(other)
    assert next_task(other_client).status_code == 204
    role_group().user_set.remove(other)
    assert next_task(other_client).status_code == 403
    role_group().user_set.add(other)
    assert next_task(other_client).status_code == 204
    other.groups.clear()
    assert next_task(other_client).status_code == 403
    role_group().user_set.add(other)
    assert next_task(other_client).status_code == 204
    role_group().user_set.clear()
    assert next_task(other_client).status_code == 403


def test_gaining_a_role_or_a_permission_gives_api_access_at_once(make_user, client_of):
    nobody = make_user(None)
    client = client_of(nobody)
    assert next_task(client).status_code == 403
    nobody.groups.add(role_group())
    assert next_task(client).status_code == 204
    nobody.groups.remove(role_group())
    assert next_task(client).status_code == 403

    nobody.user_permissions.add(annotate_permission())
    assert next_task(client).status_code == 204
    annotate_permission().user_set.remove(nobody)
    assert next_task(client).status_code == 403
    annotate_permission().user_set.add(nobody)
    assert next_task(client).status_code == 204
    nobody.user_permissions.clear()
    assert next_task(client).status_code == 403


def test_a_group_losing_a_permission_takes_it_from_its_members_at_once(annotator, client_of):
    client = client_of(annotator)
    assert next_task(client).status_code == 204
    role_group().permissions.remove(annotate_permission())
    assert next_task(client).status_code == 403
    annotate_permission().group_set.add(role_group())
    assert next_task(client).status_code == 204
    annotate_permission().group_set.remove(role_group())
    assert next_task(client).status_code == 403
    role_group().permissions.add(annotate_permission())
    assert next_task(client).status_code == 204
    role_group().permissions.clear()
    assert next_task(client).status_code == 403


def test_a_deleted_group_or_permission_takes_access_away_at_once(make_user, client_of):
    annotator = make_user(Role.ANNOTATOR)
    client = client_of(annotator)
    assert next_task(client).status_code == 204
    role_group().delete()  # the membership goes with it, without an m2m signal
    assert next_task(client).status_code == 403

    direct = make_user(None)
    direct.user_permissions.add(annotate_permission())
    direct_client = client_of(direct)
    assert next_task(direct_client).status_code == 204
    annotate_permission().delete()
    assert next_task(direct_client).status_code == 403


def test_a_superuser_flag_is_seen_at_once(make_user, client_of):
    user = make_user(None)
    client = client_of(user)
    assert client.get("/api/v1/batches/").status_code == 403
    user.is_superuser = True
    user.save()
    assert client.get("/api/v1/batches/").status_code == 200
    user.is_superuser = False
    user.save()
    assert client.get("/api/v1/batches/").status_code == 403


def test_a_deactivated_or_deleted_user_is_refused_at_once(make_user):
    user = make_user(Role.ANNOTATOR)
    client, _ = token_client(user)
    assert next_task(client).status_code == 204
    user.is_active = False
    user.save()
    refused = next_task(client)
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"] == "Token"
    assert refused.json()["detail"] == "User inactive or deleted."

    doomed = make_user(Role.ANNOTATOR)
    doomed_client, _ = token_client(doomed)
    assert next_task(doomed_client).status_code == 204
    doomed.delete()
    gone = next_task(doomed_client)
    assert gone.status_code == 401 and gone.json()["detail"] == "Invalid token."


def test_a_deleted_or_regenerated_token_is_refused_at_once(annotator):
    client, token = token_client(annotator)
    assert next_task(client).status_code == 204
    token.delete()
    refused = next_task(client)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "Invalid token."

    # DRF regenerates a token by deleting it and creating another.
    new = Token.objects.create(user=annotator)
    new_client = APIClient()
    new_client.credentials(HTTP_AUTHORIZATION=f"Token {new.key}")
    assert next_task(new_client).status_code == 204
    Token.objects.filter(pk=new.pk).delete()
    regenerated = Token.objects.create(user=annotator)
    assert next_task(new_client).status_code == 401
    new_client.credentials(HTTP_AUTHORIZATION=f"Token {regenerated.key}")
    assert next_task(new_client).status_code == 204


def test_an_entry_computed_before_the_commit_is_dropped_after_it(
    annotator, django_capture_on_commit_callbacks
):
    """A request in another process may read the permissions as they were, before the change
    commits, and cache them under the stamp the change just set: the commit drops it again."""
    client = APIClient()
    client.force_login(annotator)  # the backend's own entry (a token's is dropped alike)
    assert next_task(client).status_code == 204
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        annotator.groups.remove(role_group())
        stamp = cache.get(VERSION_KEY)
        # What that request would have stored: the permissions from before the change.
        stale = (stamp, False, frozenset(), frozenset({ANNOTATE}))
        cache.set(PERMISSIONS_KEY.format(user_id=annotator.pk), stale, 60)
        assert next_task(client).status_code == 204  # until the commit
    assert callbacks
    assert next_task(client).status_code == 403


# --- what no signal shows: the TTL ----------------------------------------------------------


def test_a_change_no_signal_shows_is_seen_when_the_entry_expires(settings, make_user):
    settings.PAIRWISE_AUTH_CACHE_SECONDS = 1
    user = make_user(Role.ANNOTATOR)
    client, _ = token_client(user)
    assert next_task(client).status_code == 204
    type(user).objects.filter(pk=user.pk).update(is_active=False)  # no signal
    assert next_task(client).status_code == 204  # stale, for at most a second
    time.sleep(1.1)
    assert next_task(client).status_code == 401


def test_permissions_cached_for_a_superuser_are_not_used_once_the_flag_is_gone(make_user):
    user = make_user(None, is_superuser=True)
    assert "annotation_app.manage_batches" in user.get_all_permissions()  # cached: every one
    type(user).objects.filter(pk=user.pk).update(is_superuser=False)  # no signal
    fresh = type(user).objects.get(pk=user.pk)
    assert not fresh.has_perm("annotation_app.manage_batches")
    assert fresh.get_all_permissions() == set()


def test_zero_seconds_turns_the_cache_off(settings, annotator):
    settings.PAIRWISE_AUTH_CACHE_SECONDS = 0
    client, token = token_client(annotator)
    assert next_task(client).status_code == 204
    with CaptureQueriesContext(connection) as captured:
        assert next_task(client).status_code == 204
    assert len(auth_queries(captured)) == 3
    digest = hashlib.sha256(token.key.encode()).hexdigest()
    assert cache.get(TOKEN_KEY.format(digest=digest)) is None
    assert cache.get(PERMISSIONS_KEY.format(user_id=annotator.pk)) is None


def test_the_batches_open_to_an_annotator_follow_their_assignment_at_once(
    annotator, make_user, make_batch
):
    batch = make_batch(comparisons=2)
    client, _ = token_client(annotator)
    other = make_user()
    batch.assigned_annotators.set([other])  # restricted to someone else
    assert next_task(client).status_code == 204
    batch.assigned_annotators.add(annotator)
    assert next_task(client).status_code == 200
    batch.assigned_annotators.remove(annotator)
    assert next_task(client).status_code == 204
    batch.assigned_groups.set([role_group()])  # or through a group
    assert next_task(client).status_code == 200


def test_a_batch_activated_is_open_at_once(annotator, make_batch):
    from annotation_app.services.batches import close_batch

    first = make_batch(comparisons=1)
    client, _ = token_client(annotator)
    task = next_task(client).json()
    client.post(
        ANNOTATIONS,
        {
            "assignment": task["assignment"],
            "preferred": "A",
            "strength": "better",
            "idempotency_key": str(uuid.uuid4()),
        },
        format="json",
    )
    assert next_task(client).status_code == 204  # cached: nothing left
    close_batch(first)
    second = make_batch(comparisons=1)
    assert second.status == "active"
    assert next_task(client).json()["batch"]["id"] == second.pk
