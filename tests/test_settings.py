"""Settings come from the environment with embedded defaults (DESIGN.md, "Configuration")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'], 'name': str(s.DATABASES['default']['NAME']),"
    " 'eager': s.CELERY_TASK_ALWAYS_EAGER, 'broker': s.CELERY_BROKER_URL, 'judge': s.LARRY_JUDGE_BASE_URL,"
    " 'debug': s.DEBUG}))"
)
VARIABLES = ("DATABASE_URL", "CELERY_BROKER_URL", "LARRY_JUDGE_BASE_URL", "LARRY_JUDGE_MODEL", "DEBUG")


def settings_with(**env):
    base = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "DJANGO_SETTINGS_MODULE": "larry_web.settings", **env},
    )
    return result


def test_with_nothing_set_it_uses_sqlite_in_process_tasks_and_the_local_judge():
    result = settings_with()
    got = json.loads(result.stdout)
    assert got["engine"] == "django.db.backends.sqlite3" and got["name"] == str(ROOT / "larry.sqlite3")
    assert got["eager"] is True and got["judge"] == "" and got["debug"] is False


def test_with_urls_set_it_uses_postgresql_and_a_celery_broker():
    result = settings_with(
        DATABASE_URL="postgres://larry:pw@db:5432/larry",
        CELERY_BROKER_URL="redis://redis:6379/0",
        LARRY_JUDGE_BASE_URL="http://judge:8000/v1",
    )
    got = json.loads(result.stdout)
    assert got["engine"] == "django.db.backends.postgresql" and got["name"] == "larry"
    assert got["eager"] is False and got["broker"] == "redis://redis:6379/0"
    assert got["judge"] == "http://judge:8000/v1"


def test_a_malformed_value_stops_start_up_naming_the_variable():
    result = settings_with(DEBUG="maybe")
    assert result.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in result.stderr


def test_every_task_ends_before_the_broker_would_hand_it_to_a_second_worker():
    probe = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "from larry_web.celery import app; "
        "print(json.dumps([app.conf.task_soft_time_limit, app.conf.task_time_limit, "
        "app.conf.broker_transport_options['visibility_timeout'], s.LARRY_JUDGE_CHUNK_DEADLINE_S]))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LARRY_TASK", "LARRY_CELERY", "LARRY_JUDGE"))}
    env = {**base, "DJANGO_SETTINGS_MODULE": "larry_web.settings"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, env=env)
    soft, hard, visibility, chunk_deadline = json.loads(result.stdout)
    assert chunk_deadline < soft < hard < visibility
    for bad in (
        {"LARRY_TASK_SOFT_TIME_LIMIT_S": "1800"},  # not below the hard limit
        {"LARRY_TASK_TIME_LIMIT_S": "4000"},  # over the visibility timeout
        {"LARRY_CELERY_VISIBILITY_TIMEOUT": "900"},
    ):
        result = subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, env={**env, **bad}
        )
        assert result.returncode != 0 and "a task must end before the broker hands it" in result.stderr, bad
    for bad, message in (
        ({"LARRY_JUDGE_CHUNK_DEADLINE_S": "5000"}, "is over 1440 s, the soft time limit (1500 s) less 60 s"),
        ({"LARRY_JUDGE_CHUNK_SIZE": "0"}, "LARRY_JUDGE_CHUNK_SIZE=0 is below 1"),
        ({"LARRY_JUDGE_CHUNK_SIZE": "-1"}, "LARRY_JUDGE_CHUNK_SIZE=-1 is below 1"),
        ({"LARRY_JUDGE_TIMEOUT_S": "0"}, "LARRY_JUDGE_TIMEOUT_S=0 is below 1"),
        ({"LARRY_TRAINING_SET_LEASE_S": "3600"}, "must be below LARRY_CELERY_VISIBILITY_TIMEOUT (3600)"),
        ({"LARRY_JUDGE_LEASE_S": "3600"}, "LARRY_JUDGE_LEASE_S=3600 must be below LARRY_CELERY_VISIBILITY_TIMEOUT"),
        ({"LARRY_JUDGE_LEASE_S": "0"}, "LARRY_JUDGE_LEASE_S=0 is below 1"),
    ):
        result = subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, env={**env, **bad}
        )
        assert result.returncode != 0 and message in result.stderr, (bad, result.stderr[-500:])


SECURITY = (
    "LARRY_HTTPS",
    "LARRY_TRUSTED_PROXIES",
    "CSRF_TRUSTED_ORIGINS",
    "ALLOWED_HOSTS",
    "SECRET_KEY",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "LARRY_LOGIN_FAILURE_LIMIT",
    "LARRY_LOGIN_LOCKOUT_S",
)
# The settings module alone (no django.setup()): a tenth of the time.
SECURITY_PROBE = (
    "import json; import larry_web.settings as s; "
    "print(json.dumps({k: getattr(s, k) for k in ('LARRY_HTTPS', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE',"
    " 'SECURE_SSL_REDIRECT', 'SECURE_HSTS_SECONDS', 'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_HSTS_PRELOAD',"
    " 'SECURE_PROXY_SSL_HEADER')}))"
)


def run_with(args: list[str], **env) -> subprocess.CompletedProcess:
    """``python <args>`` in the project folder with ``env`` and none of the security variables of this shell."""
    # DJANGO_ALLOW_ASYNC_UNSAFE: set by tests/browser.py for Playwright, and an error in `check --deploy`.
    base = {k: v for k, v in os.environ.items() if k not in (*VARIABLES, *SECURITY, "DJANGO_ALLOW_ASYNC_UNSAFE")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, "DJANGO_SETTINGS_MODULE": "larry_web.settings", **env},
    )


def security_with(**env) -> dict:
    result = run_with(["-c", SECURITY_PROBE], **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_over_plain_http_cookies_are_not_secure_and_there_is_no_hsts_nor_redirect():
    got = security_with()
    assert got["LARRY_HTTPS"] is False
    assert got["SESSION_COOKIE_SECURE"] is False and got["CSRF_COOKIE_SECURE"] is False
    assert got["SECURE_HSTS_SECONDS"] == 0 and got["SECURE_SSL_REDIRECT"] is False
    assert got["SECURE_PROXY_SSL_HEADER"] is None


def test_https_trusted_origins_turn_on_secure_cookies_and_a_year_of_hsts():
    got = security_with(CSRF_TRUSTED_ORIGINS="https://larry.example.com,https://larry2.example.com")
    assert got["LARRY_HTTPS"] is True
    assert got["SESSION_COOKIE_SECURE"] is True and got["CSRF_COOKIE_SECURE"] is True
    assert got["SECURE_HSTS_SECONDS"] == 31_536_000
    assert got["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is False and got["SECURE_HSTS_PRELOAD"] is False
    # No proxy named: Larry cannot tell https from http, so it must not redirect (that would loop).
    assert got["SECURE_SSL_REDIRECT"] is False and got["SECURE_PROXY_SSL_HEADER"] is None


def test_behind_a_trusted_proxy_over_https_it_redirects_http_and_trusts_x_forwarded_proto():
    got = security_with(CSRF_TRUSTED_ORIGINS="https://larry.example.com", LARRY_TRUSTED_PROXIES="1")
    assert got["SECURE_SSL_REDIRECT"] is True
    assert got["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_one_http_origin_means_not_https_unless_larry_https_says_so():
    mixed = "https://larry.example.com,http://larry.internal:8000"
    assert security_with(CSRF_TRUSTED_ORIGINS=mixed)["SESSION_COOKIE_SECURE"] is False
    assert security_with(CSRF_TRUSTED_ORIGINS=mixed, LARRY_HTTPS="1")["SESSION_COOKIE_SECURE"] is True
    assert security_with(LARRY_HTTPS="yes")["CSRF_COOKIE_SECURE"] is True
    assert security_with(CSRF_TRUSTED_ORIGINS="https://larry.example.com", LARRY_HTTPS="0")["LARRY_HTTPS"] is False


def test_each_switch_overrides_what_https_implies():
    got = security_with(
        LARRY_HTTPS="1",
        SESSION_COOKIE_SECURE="0",
        SECURE_HSTS_SECONDS="600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="on",
        SECURE_HSTS_PRELOAD="true",
    )
    assert got["SESSION_COOKIE_SECURE"] is False and got["CSRF_COOKIE_SECURE"] is True
    assert got["SECURE_HSTS_SECONDS"] == 600
    assert got["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True and got["SECURE_HSTS_PRELOAD"] is True
    assert security_with(SECURE_SSL_REDIRECT="1")["SECURE_SSL_REDIRECT"] is True


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LARRY_HTTPS", "maybe", "LARRY_HTTPS='maybe' is not a boolean"),
        ("SESSION_COOKIE_SECURE", "2", "SESSION_COOKIE_SECURE='2' is not a boolean"),
        ("SECURE_HSTS_SECONDS", "a year", "SECURE_HSTS_SECONDS='a year' is not an integer"),
        ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS=-1 is below 0"),
        ("LARRY_TRUSTED_PROXIES", "-1", "LARRY_TRUSTED_PROXIES=-1 is below 0"),
        ("LARRY_LOGIN_FAILURE_LIMIT", "0", "LARRY_LOGIN_FAILURE_LIMIT=0 is below 1"),
        ("LARRY_LOGIN_LOCKOUT_S", "15m", "LARRY_LOGIN_LOCKOUT_S='15m' is not an integer"),
    ],
)
def test_a_malformed_security_switch_stops_start_up_naming_it(name, value, message):
    result = run_with(["-c", SECURITY_PROBE], **{name: value})
    assert result.returncode != 0 and message in result.stderr


def test_log_in_lock_outs_default_to_10_failures_and_15_minutes_and_follow_the_environment():
    probe = (
        "import json; import larry_web.settings as s; "
        "print(json.dumps([s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), s.AXES_LOCKOUT_PARAMETERS]))"
    )
    assert json.loads(run_with(["-c", probe]).stdout) == [10, 900, ["username", "ip_address"]]
    changed = run_with(["-c", probe], LARRY_LOGIN_FAILURE_LIMIT="5", LARRY_LOGIN_LOCKOUT_S="3600")
    assert json.loads(changed.stdout)[:2] == [5, 3600]


def documented_production_env() -> dict[str, str]:
    """The ``.env`` lines of docs/DEPLOY.md's block that starts ``# .env behind HTTPS``."""
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    block = text.split("# .env behind HTTPS", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    pairs = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return dict(pair.split("=", 1) for pair in pairs if pair)


def test_check_deploy_is_clean_with_the_settings_docs_deploy_documents():
    production = {**documented_production_env(), "SECRET_KEY": "test-only-nGq8vWfTz3yPb2LxRc7_dHs5JmAe4UoKi9Y6tQ-w1"}
    assert production["LARRY_TRUSTED_PROXIES"] == "1"
    result = run_with(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **production)
    assert result.returncode == 0, result.stderr
    # ...and it is the documented settings that make it clean.
    bare = run_with(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], SECRET_KEY=production["SECRET_KEY"])
    assert bare.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in bare.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("five", "LARRY_JUDGE_TOP_LOGPROBS='five' is not an integer"),
        ("-1", "LARRY_JUDGE_TOP_LOGPROBS=-1 is below 0"),
        ("21", "LARRY_JUDGE_TOP_LOGPROBS=21 is over 20"),
    ],
)
def test_top_logprobs_is_parsed_strictly(value, message):
    result = settings_with(LARRY_JUDGE_TOP_LOGPROBS=value)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-500:]


def test_top_logprobs_defaults_to_5_and_0_turns_it_off():
    probe = "import django; django.setup(); from django.conf import settings as s; print(s.LARRY_JUDGE_TOP_LOGPROBS)"
    for env, expected in (
        ({}, "5"),
        ({"LARRY_JUDGE_TOP_LOGPROBS": "0"}, "0"),
        ({"LARRY_JUDGE_TOP_LOGPROBS": "20"}, "20"),
    ):
        base = {k: v for k, v in os.environ.items() if k not in (*VARIABLES, "LARRY_JUDGE_TOP_LOGPROBS")}
        result = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**base, "DJANGO_SETTINGS_MODULE": "larry_web.settings", **env},
        )
        assert result.stdout.strip() == expected, result.stderr[-500:]
