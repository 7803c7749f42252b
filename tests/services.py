"""A pytest plugin (loaded with ``-p tests.services``) that finds the real services.

Before Django's settings load, it points ``DATABASE_URL`` at the local
PostgreSQL when one answers on 127.0.0.1:5432 and nothing else was set, and
notes whether Redis and Debian's Chromium are there. Tests that need a missing
service call ``require(...)``: a skip with a message that names the service,
or a failure when ``LARRY_REQUIRE_SERVICES=1`` (set by ``.ci/run``, so CI can
never pass without the real services).
"""

import os
import shutil
import socket
from pathlib import Path

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CHROMIUM = "/usr/bin/chromium"
SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

HOW_TO_START = {
    "postgres": "start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "redis": 'start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no',
    "chromium": "install Debian's chromium package: apt-get install -y chromium",
    "shared_data": f"the real data sets are read from {SHARED_DATA}",
}


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _prepare_environment() -> None:
    if not os.environ.get("DATABASE_URL") and _answers(PG_HOST, PG_PORT):
        os.environ["DATABASE_URL"] = f"postgres://postgres@{PG_HOST}:{PG_PORT}/larry"
    # Tests run tasks in-process unless a test starts a worker of its own.
    os.environ.pop("CELERY_BROKER_URL", None)
    for name in ("LARRY_JUDGE_BASE_URL", "LARRY_JUDGE_MODEL", "LARRY_JUDGE_API_KEY"):
        os.environ.pop(name, None)


# At import, which `-p tests.services` makes happen before pytest-django loads the settings.
_prepare_environment()


def pytest_report_header(config):
    database = os.environ.get("DATABASE_URL", "").split("@")[-1] or "SQLite"
    return f"larry: database {database}; redis {'up' if available('redis') else 'absent'}"


def available(service: str) -> bool:
    """Whether ``service`` (postgres, redis, chromium, shared_data) is usable here."""
    if service == "postgres":
        return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    if service == "redis":
        return _answers(REDIS_HOST, REDIS_PORT)
    if service == "chromium":
        return shutil.which(CHROMIUM) is not None
    if service == "shared_data":
        return (SHARED_DATA / "halueval_general.jsonl").is_file()
    raise ValueError(f"unknown service {service!r}")


def require(*services: str) -> None:
    """Skip (or, under LARRY_REQUIRE_SERVICES=1, fail) the test when a service is missing."""
    for service in services:
        if not available(service):
            message = f"needs {service}, which is not available here ({HOW_TO_START[service]})"
            if os.environ.get("LARRY_REQUIRE_SERVICES") == "1" and service != "shared_data":
                pytest.fail(message + "; LARRY_REQUIRE_SERVICES=1 turns this skip into a failure")
            pytest.skip(message)
