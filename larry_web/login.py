"""Log-in lock-outs (django-axes): the client address they count, the lock-out page, the token endpoint.

Settings: ``AXES_*`` in larry_web/settings.py, from ``LARRY_LOGIN_FAILURE_LIMIT``, ``LARRY_LOGIN_LOCKOUT_S``
and ``LARRY_TRUSTED_PROXIES``.
"""

import ipaddress
import logging
import math

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, parsers, serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.response import Response

from larry_web.parsers import JSONParser

log = logging.getLogger(__name__)
_warned_untrusted_forwarding = False


def client_ip(request: HttpRequest) -> str:
    """The client's IP address as a string, for log-in lock-outs (django-axes' ``AXES_CLIENT_IP_CALLABLE``).

    ``REMOTE_ADDR``, unless ``LARRY_TRUSTED_PROXIES`` is n > 0: then the n-th address from the right
    of ``X-Forwarded-For``, the one the outermost trusted proxy received the request from (each proxy
    appends the address it received from; what the client itself put on the left is not believed).
    That is Werkzeug ProxyFix's ``x_for=n`` rule. A header with fewer than n addresses, or whose
    n-th is not an IP address, gives ``REMOTE_ADDR``: such a request did not come through the proxies.
    """
    global _warned_untrusted_forwarding
    remote = request.META.get("REMOTE_ADDR", "")
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    proxies = settings.LARRY_TRUSTED_PROXIES
    if not proxies:
        if forwarded and not _warned_untrusted_forwarding:
            _warned_untrusted_forwarding = True
            log.warning(
                "A request came with X-Forwarded-For, which Larry ignores: if Larry is behind a reverse proxy, "
                "set LARRY_TRUSTED_PROXIES (docs/DEPLOY.md), else every client has the proxy's address."
            )
        return remote
    hops = [hop.strip() for hop in forwarded.split(",")]
    if len(hops) < proxies:
        return remote
    try:
        return str(ipaddress.ip_address(hops[-proxies]))
    except ValueError:
        return remote


def _lock_out_seconds() -> int:
    return math.ceil(settings.AXES_COOLOFF_TIME.total_seconds())


def lock_out_message() -> str:
    """What a locked-out client is told, with the cool-off (``AXES_COOLOFF_TIME``) in words."""
    seconds = _lock_out_seconds()
    if seconds < 60:
        wait = f"{seconds} second{'s' if seconds != 1 else ''}"
    else:
        minutes = math.ceil(seconds / 60)
        wait = f"{minutes} minute{'s' if minutes != 1 else ''}"
    return (
        "Too many failed log-ins for this account or from this address: "
        f"log-ins are refused for {wait} after the last failed one."
    )


def lock_out_response(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """The log-in pages' answer to a locked-out client (``AXES_LOCKOUT_CALLABLE``): 429 with Retry-After."""
    response = render(request, "registration/locked_out.html", {"message": lock_out_message()}, status=429)
    response["Retry-After"] = str(_lock_out_seconds())
    return response


# Django's usernames are at most 150 characters.
USERNAME_MAX = 150


class ObtainAuthTokenOrLockOut(ObtainAuthToken):
    """``POST /api/token/`` with a username and password: ``{"token": key}``; 429 when locked out.

    django-axes counts this endpoint's failures with the log-in pages' (DRF's serializer calls
    ``authenticate(request=...)``) and refuses a locked-out account or address whatever the password;
    DRF's own view answers that with the 400 of a wrong password, which would leave a script retrying.
    """

    # DRF's view lists its own parsers: the same, with a JSON body nested too deeply a 400.
    parser_classes = (parsers.FormParser, parsers.MultiPartParser, JSONParser)

    @extend_schema(
        responses={
            200: inline_serializer("AuthToken", {"token": serializers.CharField()}),
            400: OpenApiResponse(description="Wrong username or password, or one missing."),
            429: inline_serializer("LockedOut", {"detail": serializers.CharField()}),
        }
    )
    def post(self, request, *args, **kwargs):
        username = request.data.get("username") if hasattr(request.data, "get") else None
        if isinstance(username, str) and len(username) > USERNAME_MAX:
            # No account has such a name, and the lock-out's records keep at most 255 characters of it.
            raise exceptions.ValidationError({"username": [f"at most {USERNAME_MAX} characters"]})
        serializer = self.get_serializer(data=request.data)
        if not serializer.is_valid():
            # Set by django-axes on this (DRF) request when it refused the log-in or this failure locked it out.
            if getattr(request, "axes_locked_out", False):
                return Response(
                    {"detail": lock_out_message()}, status=429, headers={"Retry-After": str(_lock_out_seconds())}
                )
            raise exceptions.ValidationError(serializer.errors)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
