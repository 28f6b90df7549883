"""API throttles: DRF's own, with their rates read from the settings at each request, counting
clients by a checked address.

DRF copies ``DEFAULT_THROTTLE_RATES`` into its throttle classes once, at import; reading them
per request lets a deployment's settings (and a test's ``settings`` fixture) change them. The
rates are named in ``config/settings.py``: ``anon``, ``user`` and ``auth_token``. The counts
live in Django's cache (``CACHES``).
"""

from __future__ import annotations

import ipaddress

from rest_framework import throttling
from rest_framework.settings import api_settings


def client_address(request) -> str:
    """The client's address as the throttles see it; django-axes uses it too, so that login
    lockouts and API throttles count the same client behind the same proxies.

    Behind ``NUM_PROXIES`` (``PAIRWISE_PROXY_COUNT``) proxies it is read from
    ``X-Forwarded-For`` as DRF reads it, but only if it is an IP address: whatever a client put
    in that header otherwise (a proxy appends to it; it does not clean it) falls back to the
    connection's address, ``REMOTE_ADDR``.
    """
    forwarded = throttling.BaseThrottle().get_ident(request)
    try:
        return str(ipaddress.ip_address(forwarded))
    except ValueError:
        return request.META.get("REMOTE_ADDR", "")


class _RatesFromSettings:
    @property
    def THROTTLE_RATES(self) -> dict[str, str | None]:  # DRF names it so
        return api_settings.DEFAULT_THROTTLE_RATES

    def get_ident(self, request) -> str:
        return client_address(request)


class AnonRateThrottle(_RatesFromSettings, throttling.AnonRateThrottle):
    """Requests without credentials, per client address (rate ``anon``)."""


class UserRateThrottle(_RatesFromSettings, throttling.UserRateThrottle):
    """Requests of a signed-in user or token, per user (rate ``user``)."""


class ScopedRateThrottle(_RatesFromSettings, throttling.ScopedRateThrottle):
    """Views naming a ``throttle_scope``, per user or client address (rate of that name)."""
