"""A pytest plugin (loaded with ``-p tests.services``) that finds the real services.

Before Django's settings load, it points ``DATABASE_URL`` at the local
PostgreSQL when one answers on 127.0.0.1:5432 and nothing else was set, and
notes whether Redis, Debian's Chromium and a vLLM server are there (``make
test`` prepares them all first, with scripts/test_services.sh). Tests that need
a missing service call ``require(...)``: a skip with a message that says what is
missing and the command that provides it, or a failure when
``LARRY_REQUIRE_SERVICES=1`` (set by ``.ci/run``, so CI can never pass without
the real services). Only what lives outside the repository (the data sets and
the vLLM model builder in ../shared) still skips under CI.
"""

import os
import shutil
import socket
from pathlib import Path

import pytest

PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
# The folder beside the checkout with the data sets and tools that are not committed.
SHARED = Path(os.environ.get("LARRY_SHARED_DIR") or ROOT.parent / "shared").resolve()
SHARED_DATA = SHARED / "data"
TINY_MODEL_BUILDER = SHARED / "tools" / "make_tiny_llama.py"
TINY_MODEL = (ROOT / os.environ.get("LARRY_VLLM_DIR", ".vllm") / "tiny-llama" / "config.json").resolve()

HOW_TO_START = {
    "postgres": (
        "PostgreSQL answering on 127.0.0.1:5432 (user postgres, trust auth), DATABASE_URL unset or postgres://;"
        " `make test` starts an installed one when run as root"
        " (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start);"
        " to install it: apt-get install -y postgresql"
    ),
    "redis": (
        "Redis answering on 127.0.0.1:6379; `make test` starts an installed one"
        ' (redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no);'
        " to install it: apt-get install -y redis-server"
    ),
    "chromium": (
        f"Debian's Chromium at {CHROMIUM}; `make test` installs it when run as root or with password-less sudo;"
        " else run as root: apt-get update && apt-get install -y chromium"
    ),
    "shared_data": (
        f"the real data set {SHARED_DATA / 'halueval_general.jsonl'}, which comes with the shared folder beside"
        " this checkout (../shared); to read it from elsewhere: LARRY_SHARED_DIR=/path/to/shared make test"
    ),
    "vllm": (
        "a vLLM server (LARRY_TEST_VLLM_URL); `make test` starts one unless given VLLM=0;"
        " or run scripts/vllm_judge.sh start and export the variables it prints"
    ),
}


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def checkout_database_name() -> str:
    """``larry_<8 hex>``: a database name of this checkout's own (from its path), so that two checkouts on
    one machine running their suites at once never share (and drop) each other's test databases."""
    import hashlib

    return "larry_" + hashlib.sha256(str(Path(__file__).resolve().parent.parent).encode()).hexdigest()[:8]


def _prepare_environment() -> None:
    if not os.environ.get("DATABASE_URL") and _answers(PG_HOST, PG_PORT):
        os.environ["DATABASE_URL"] = f"postgres://postgres@{PG_HOST}:{PG_PORT}/{checkout_database_name()}"
    # Tests run tasks in-process unless a test starts a worker of its own.
    os.environ.pop("CELERY_BROKER_URL", None)
    for name in ("LARRY_JUDGE_BASE_URL", "LARRY_JUDGE_MODEL", "LARRY_JUDGE_API_KEY"):
        os.environ.pop(name, None)


# At import, which `-p tests.services` makes happen before pytest-django loads the settings.
_prepare_environment()


def pytest_report_header(config):
    database = os.environ.get("DATABASE_URL", "").split("@")[-1] or "SQLite"
    present = {service: "up" if available(service) else "absent" for service in ("redis", "chromium", "vllm")}
    return "larry: database {}; redis {redis}; chromium {chromium}; vllm {vllm}".format(database, **present)


def available(service: str) -> bool:
    """Whether ``service`` (postgres, redis, chromium, shared_data, vllm) is usable here."""
    if service == "postgres":
        return os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))
    if service == "redis":
        return _answers(REDIS_HOST, REDIS_PORT)
    if service == "chromium":
        return shutil.which(CHROMIUM) is not None
    if service == "shared_data":
        return (SHARED_DATA / "halueval_general.jsonl").is_file()
    if service == "vllm":
        return bool(os.environ.get("LARRY_TEST_VLLM_URL"))
    raise ValueError(f"unknown service {service!r}")


def _outside_the_repository(service: str) -> bool:
    """Whether ``service`` needs what only ../shared provides, so that CI on a bare checkout cannot have it."""
    if service == "shared_data":
        return True
    if service == "vllm":
        return not TINY_MODEL_BUILDER.is_file() and not TINY_MODEL.is_file()
    return False


def require(*services: str) -> None:
    """Skip (or, under LARRY_REQUIRE_SERVICES=1, fail) the test when a service is missing.

    The message says what is missing and the command that provides it; for vLLM,
    the reason scripts/test_services.sh found (``LARRY_VLLM_UNAVAILABLE``) when it
    could not start one. Raises ``pytest.skip.Exception`` or ``pytest.fail.Exception``.
    """
    for service in services:
        if not available(service):
            how = HOW_TO_START[service]
            if service == "vllm" and os.environ.get("LARRY_VLLM_UNAVAILABLE"):
                how = os.environ["LARRY_VLLM_UNAVAILABLE"]
            message = f"needs {service}, which is missing here: {how}"
            if os.environ.get("LARRY_REQUIRE_SERVICES") == "1" and not _outside_the_repository(service):
                pytest.fail(message + "; LARRY_REQUIRE_SERVICES=1 turns this skip into a failure")
            pytest.skip(message)
