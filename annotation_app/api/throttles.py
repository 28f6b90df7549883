"""API throttles: DRF's own, with their rates read from the settings at each request.

DRF copies ``DEFAULT_THROTTLE_RATES`` into its throttle classes once, at import; reading them
per request lets a deployment's settings (and a test's ``settings`` fixture) change them. The
rates are named in ``config/settings.py``: ``anon``, ``user`` and ``auth_token``.
"""

from __future__ import annotations

from rest_framework import throttling
from rest_framework.settings import api_settings


class _RatesFromSettings:
    @property
    def THROTTLE_RATES(self) -> dict[str, str | None]:  # DRF names it so
        return api_settings.DEFAULT_THROTTLE_RATES


class AnonRateThrottle(_RatesFromSettings, throttling.AnonRateThrottle):
    """Requests without credentials, per client address (rate ``anon``)."""


class UserRateThrottle(_RatesFromSettings, throttling.UserRateThrottle):
    """Requests of a signed-in user or token, per user (rate ``user``)."""


class ScopedRateThrottle(_RatesFromSettings, throttling.ScopedRateThrottle):
    """Views naming a ``throttle_scope``, per user or client address (rate of that name)."""


def client_address(request) -> str:
    """The client's address as the throttles see it (``NUM_PROXIES``); django-axes uses it too,
    so that login lockouts and API throttles count the same client behind the same proxies."""
    return throttling.BaseThrottle().get_ident(request)
