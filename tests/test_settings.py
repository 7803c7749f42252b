"""Settings come from the environment with embedded defaults (DESIGN.md, "Configuration")."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "LARRY_JUDGE_CHUNK_DEADLINE_S": "5000"},
    )
    assert json.loads(result.stdout)[3] == 1440  # capped at the soft limit less a minute
