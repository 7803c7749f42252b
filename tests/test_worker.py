"""A whole judge run through a real Celery worker process over Redis, on PostgreSQL.

The command that starts the run and the worker are separate processes, as in
production: ``manage.py run_judge`` enqueues over Redis and polls the run's
row; the worker judges against the test judge server on 127.0.0.1.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.db import connection

from judging.models import GateDecision, JudgeRun, Verdict
from tests.conftest import make_items
from tests.services import require

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def worker_env():
    require("postgres", "redis")
    db = connection.settings_dict
    queue = f"larry-test-{uuid.uuid4().hex[:8]}"
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
        "LARRY_CELERY_QUEUE": queue,
        "LARRY_JUDGE_CHUNK_SIZE": "8",
    }


def test_a_real_worker_judges_a_whole_run_over_redis(project, judge_server, worker_env):
    responses = [f"Answer {i}" + (" WRONG" if i % 3 == 0 else "") for i in range(30)]
    make_items(project, responses)
    project.judge_base_url, project.judge_model = judge_server.base_url, "test-judge"
    project.save()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "larry_web",
            "worker",
            "-Q",
            worker_env["LARRY_CELERY_QUEUE"],
            "-c",
            "2",
            "-l",
            "info",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=worker_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        command = subprocess.run(
            [sys.executable, "manage.py", "run_judge", project.slug, "--timeout", "90"],
            cwd=ROOT,
            env=worker_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        worker.terminate()
        log = worker.communicate(timeout=30)[0]
    assert command.returncode == 0, command.stderr + log
    run = JudgeRun.objects.get()
    assert (run.status, run.items_done, run.items_error) == ("finished", 30, 0)
    verdicts = dict(Verdict.objects.values_list("item__response", "verdict"))
    assert verdicts == {r: "reject" if "WRONG" in r else "accept" for r in responses}
    assert len(judge_server.requests) == 30
    # The worker, not the command, did the judging: one start task and 4 chunks of up to 8 items.
    assert log.count("judging.tasks.start_judge_run[") >= 2 and "succeeded" in log
    assert log.count("judging.tasks.judge_chunk[") >= 8, log
    assert GateDecision.objects.filter(outcome="accept").count() == 20
