"""Who a token belongs to and what a user may do, kept in Django's cache between requests.

Why: every API request of the annotation loop authenticated with a token and checked one
permission, which took three SQL statements before the view ran (the token joined to its
user; the user's own permissions; their groups' permissions), about a fifth of the loop's
Django CPU and as much again in PostgreSQL. They change rarely, so they are cached:

- ``CachedPermissionsBackend`` (``AUTHENTICATION_BACKENDS``): Django's ``ModelBackend`` with
  each active user's two permission sets (own, through groups) kept under their user id.
- ``CachedTokenAuthentication`` (DRF's ``DEFAULT_AUTHENTICATION_CLASSES``): DRF's token
  authentication with the token's user kept under a SHA-256 hash of the key. The raw key is
  never in the cache, nor the user's password hash: the user comes back with its password
  deferred, so it is read from the database only if something asks for it (and saving that
  user writes only the fields it holds). The user's two permission sets come in the same
  entry, memoised on the user object as the backend would, so that a token request reads the
  cache once (one round trip to Redis), not for the token and again for the permissions.

- :func:`open_batch_ids`: which batches next-task tries for a user, in its order (their
  restrictions, read through three joins, made the loop's costliest statement to plan).

Within a request nothing changes: Django's memo on the user object (``_perm_cache`` and
friends) still answers a second ``has_perm``; inactive users have no permissions, active
superusers all; object permissions are unsupported, as before; an unknown token or an inactive
user is refused with DRF's own errors.

Invalidation: one version stamp (a random string) in the cache, read in the same round trip as
an entry (``cache.get_many``); an entry is used only if it was stored under the current stamp.
Any change that can alter a user's permissions, a token's user or the batches open to a user
replaces the stamp, so every entry is dropped at once: users' groups and permissions, groups'
permissions and batches' assigned annotators and groups changed (``m2m_changed``, either side,
clear included), a batch, group or permission saved or deleted, a user or token saved or
deleted (DRF regenerates a token by deleting it), and every ``migrate`` (permissions are
created in bulk, without signals). The stamp is replaced at once, so the
changing request and later ones in its transaction see the change, and again after the commit,
so that an entry another request computed meanwhile from the not yet committed state is
dropped too. A stamp evicted from the cache is replaced by a new one, never an old one again.
Changes are rare (an admin's edit, a sign-in's ``last_login``), so dropping everything is
cheap, and it cannot miss a user.

What signals cannot see (``QuerySet.update``, raw SQL, another process when each process has
its own cache, i.e. without ``CACHE_URL``) is seen when the entry expires:
``PAIRWISE_AUTH_CACHE_SECONDS`` (default 60) bounds how long it can be stale; 0 turns this
caching off. The async variants (``aget_all_permissions``…) are Django's, uncached: the
platform is served over WSGI.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.db import transaction
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication

VERSION_KEY = "pairwise:auth:version"
PERMISSIONS_KEY = "pairwise:auth:perms:{user_id}"
TOKEN_KEY = "pairwise:auth:token:{digest}"
BATCHES_KEY = "pairwise:auth:batches:{user_id}"


def cache_seconds() -> int:
    """How long an entry may be used (``PAIRWISE_AUTH_CACHE_SECONDS``); 0: not cached."""
    return settings.PAIRWISE_AUTH_CACHE_SECONDS


def _current(found: dict[str, Any], key: str) -> tuple[str | None, Any]:
    """The stamp to store a new entry under, and the entry at ``key`` if it is current.

    Without a stamp in the cache (never set, evicted) a new one is added; when another process
    added one first, the stamp is None and nothing is stored this time.
    """
    version = found.get(VERSION_KEY)
    if version is None:
        version = uuid.uuid4().hex
        return (version if cache.add(VERSION_KEY, version, timeout=None) else None), None
    entry = found.get(key)
    return version, (entry if entry is not None and entry[0] == version else None)


def invalidate_all() -> None:
    """Drop every cached permission set and token: a new stamp, no entry matches it."""
    cache.set(VERSION_KEY, uuid.uuid4().hex, timeout=None)


def _changed(using: str | None = None, **kwargs) -> None:
    """A signal's receiver: drop everything now and again after the commit (see above)."""
    invalidate_all()
    connection = transaction.get_connection(using)
    if connection.in_atomic_block:
        transaction.on_commit(invalidate_all, using=using, robust=True)


def _m2m_changed(action: str, using: str | None = None, **kwargs) -> None:
    if action in {"post_add", "post_remove", "post_clear"}:
        _changed(using)


def connect_signals() -> None:
    """Connects the receivers that keep the cache exact (``AnnotationAppConfig.ready``)."""
    from rest_framework.authtoken.models import Token

    from annotation_app.models import Batch

    user_model = get_user_model()
    for through in (
        user_model.groups.through,
        user_model.user_permissions.through,
        Group.permissions.through,
        Batch.assigned_annotators.through,
        Batch.assigned_groups.through,
    ):
        m2m_changed.connect(_m2m_changed, sender=through, dispatch_uid=f"auth_cache_{through}")
    for model in (user_model, Group, Permission, Token, Batch):
        for signal in (post_save, post_delete):
            signal.connect(_changed, sender=model, dispatch_uid=f"auth_cache_{model}")
    post_migrate.connect(_changed, dispatch_uid="auth_cache_migrate")


# --- batches open to a user ------------------------------------------------------------------


def open_batch_ids(user, compute: Callable[[], list[int]]) -> list[int]:
    """The ids of the batches open to ``user``, in next-task's order: from the cache, or from
    ``compute`` (then cached)."""
    seconds = cache_seconds()
    if seconds <= 0:
        return compute()
    key = BATCHES_KEY.format(user_id=user.pk)
    version, entry = _current(cache.get_many([VERSION_KEY, key]), key)
    if entry is not None:
        return list(entry[1])
    batch_ids = compute()
    if version is not None:
        cache.set(key, (version, tuple(batch_ids)), seconds)
    return batch_ids


# --- permissions ----------------------------------------------------------------------------


def _memoise(user, own: frozenset[str], through_groups: frozenset[str]) -> None:
    """Where ``ModelBackend`` memoises a user's permission sets (it then asks nothing)."""
    user._user_perm_cache, user._group_perm_cache = set(own), set(through_groups)


class CachedPermissionsBackend(ModelBackend):
    """Django's ``ModelBackend``, with each user's permission sets kept in the cache."""

    def get_user_permissions(self, user_obj, obj=None) -> set[str]:
        self._load(user_obj, obj)
        return super().get_user_permissions(user_obj, obj)

    def get_group_permissions(self, user_obj, obj=None) -> set[str]:
        self._load(user_obj, obj)
        return super().get_group_permissions(user_obj, obj)

    def _load(self, user_obj, obj) -> None:
        """Puts the user's two sets where ``ModelBackend`` memoises them on the user object,
        from the cache, or (on a miss) from ``ModelBackend``'s queries, then caches them."""
        if obj is not None or not user_obj.is_active or user_obj.is_anonymous:
            return  # ModelBackend answers "none" without a query
        if hasattr(user_obj, "_user_perm_cache") and hasattr(user_obj, "_group_perm_cache"):
            return  # memoised on this object already
        seconds = cache_seconds()
        if seconds <= 0:
            return
        key = PERMISSIONS_KEY.format(user_id=user_obj.pk)
        version, entry = _current(cache.get_many([VERSION_KEY, key]), key)
        # A superuser has every permission: an entry from before a change of the flag that no
        # signal saw (QuerySet.update) is not used.
        if entry is not None and entry[1] == user_obj.is_superuser:
            _memoise(user_obj, entry[2], entry[3])
            return
        own = super().get_user_permissions(user_obj)
        through_groups = super().get_group_permissions(user_obj)
        if version is not None:
            stored = (version, user_obj.is_superuser, frozenset(own), frozenset(through_groups))
            cache.set(key, stored, seconds)


# --- tokens ---------------------------------------------------------------------------------


def _field_values(instance: Model, leave_out: set[str]) -> dict[str, Any]:
    deferred = instance.get_deferred_fields()
    return {
        field.attname: getattr(instance, field.attname)
        for field in instance._meta.concrete_fields
        if field.attname not in leave_out and field.attname not in deferred
    }


def _from_values(model: type[Model], using: str, values: dict[str, Any]) -> Model:
    """An instance as if loaded from the database, the fields not in ``values`` deferred."""
    fields = model._meta.concrete_fields
    return model.from_db(
        using,
        [field.attname for field in fields if field.attname in values],
        [values[field.attname] for field in fields if field.attname in values],
    )


class CachedTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, with each token's user kept in the cache (by the key's
    SHA-256, password left out)."""

    def authenticate_credentials(self, key: str):
        seconds = cache_seconds()
        if seconds <= 0:
            return super().authenticate_credentials(key)
        cache_key = TOKEN_KEY.format(digest=hashlib.sha256(key.encode()).hexdigest())
        version, entry = _current(cache.get_many([VERSION_KEY, cache_key]), cache_key)
        if entry is None:
            user, token = super().authenticate_credentials(key)  # DRF's query and errors
            if version is not None:
                cache.set(cache_key, (version, *self._dump(user, token)), seconds)
            return user, token
        user, token = self._restore(key, *entry[1:])
        if not user.is_active:  # stored active; kept in step with DRF's check all the same
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, token

    def _dump(self, user, token) -> tuple:
        """What ``_restore`` needs, the token's key (it is in the request) and the user's
        password hash left out. The permissions are read now, memoised on ``user`` for this
        request's checks."""
        backend = ModelBackend()
        return (
            token._state.db,
            _field_values(token, {"key"}),
            user._state.db,
            _field_values(user, {"password"}),
            frozenset(backend.get_user_permissions(user)),
            frozenset(backend.get_group_permissions(user)),
        )

    def _restore(
        self,
        key: str,
        token_db: str,
        token_values: dict[str, Any],
        user_db: str,
        user_values: dict[str, Any],
        own_permissions: frozenset[str],
        group_permissions: frozenset[str],
    ):
        user = _from_values(get_user_model(), user_db, user_values)
        _memoise(user, own_permissions, group_permissions)
        token = _from_values(self.get_model(), token_db, {"key": key, **token_values})
        token.user = user
        return user, token
