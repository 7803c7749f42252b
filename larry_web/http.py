"""Small HTTP helpers shared by the REST views."""

import re

_RESPOND_ASYNC = re.compile(r"(?:^|,)\s*respond-async\s*(?:[;,]|$)", re.IGNORECASE)


def prefers_async(request) -> bool:
    """Whether the request asks to be answered before the work is done: ``Prefer: respond-async`` (RFC 7240, 4.1)."""
    return bool(_RESPOND_ASYNC.search(request.headers.get("Prefer", "")))
