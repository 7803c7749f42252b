"""A whole judge run through a real Celery worker process over Redis, on PostgreSQL.

The command that starts the run and the worker are separate processes, as in
production: ``manage.py run_judge`` enqueues over Redis and polls the run's
row; the worker judges against the test judge server on 127.0.0.1.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from annotations.models import Item, Review
from distillation.models import TrainingSet
from distillation.training_sets import iter_file, training_set_build
from judging.models import GateDecision, JudgeRun, JudgeWork, Verdict
from judging.services import gate_apply
from tests.celery_worker import start_worker, worker_command
from tests.conftest import ROOT, make_items, use_judge
from tests.judge_server import JudgeServer

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_a_real_worker_judges_a_whole_run_over_redis(project, judge_server, worker_env, worker):
    responses = [f"Answer {i}" + (" WRONG" if i % 3 == 0 else "") for i in range(30)]
    make_items(project, responses)
    use_judge(project, judge_server.base_url)
    command = subprocess.run(
        [sys.executable, "manage.py", "run_judge", project.slug, "--timeout", "90", "--use"],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = worker.log()
    assert command.returncode == 0, command.stderr + log
    run = JudgeRun.objects.get()
    assert (run.status, run.items_done, run.items_error) == ("finished", 30, 0)
    verdicts = dict(Verdict.objects.values_list("item__response", "verdict"))
    assert verdicts == {r: "reject" if "WRONG" in r else "accept" for r in responses}
    assert len(judge_server.requests) == 30
    # The worker, not the command, did the judging: one start task and 4 chunks of up to 8 items.
    assert log.count("judging.tasks.start_judge_run[") >= 2 and "succeeded" in log
    assert log.count("judging.tasks.judge_chunk[") >= 8, log
    # --use made the run the gating policy; the re-gating it asked for runs on the worker too.
    deadline = time.monotonic() + 60
    while GateDecision.objects.filter(outcome="accept").count() != 20 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert GateDecision.objects.filter(outcome="accept", basis="judge", judge_run=run).count() == 20, worker.log()


def test_saving_a_rule_regates_in_the_background_on_a_real_worker(project, worker_env, worker):
    make_items(project, ["Switch to Dropbox.", "Plus is $4 a month."])
    for item in project.items.all():
        Review.objects.create(item=item, decision="accept", origin="import")
    gate_apply(project=project)
    save_rule = (
        "from annotations.models import Project; from judging.models import LabelFunction; "
        "from judging.services import label_function_save; "
        "label_function_save(rule=LabelFunction(project=Project.objects.get(slug='support'), name='competitor', "
        "kind='keywords', params={'keywords': ['Dropbox']}, reason='recommends a competitor'))"
    )
    subprocess.run([sys.executable, "manage.py", "shell", "-c", save_rule], cwd=ROOT, env=worker_env, check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        outcomes = dict(GateDecision.objects.values_list("item__response", "outcome"))
        if outcomes.get("Switch to Dropbox.") == "reject":
            break
        time.sleep(0.2)
    log = worker.log()
    assert outcomes == {"Switch to Dropbox.": "reject", "Plus is $4 a month.": "accept"}, log
    assert "judging.tasks.regate_project[" in log


# Short leases, and a visibility timeout far above the time the kill tests allow: recovery must come from the
# leases (and the stall check), not from Redis redelivering a dead worker's task.
KILL_ENV = {
    "LARRY_CELERY_VISIBILITY_TIMEOUT": "300",
    "LARRY_TASK_SOFT_TIME_LIMIT_S": "200",
    "LARRY_TASK_TIME_LIMIT_S": "250",
    "LARRY_JUDGE_LEASE_S": "3",
    "LARRY_TRAINING_SET_LEASE_S": "3",  # below the visibility timeout, as start-up requires
    "LARRY_JUDGE_CHUNK_SIZE": "10",
}
IN_FLIGHT = 4


def _kill_mid_run(
    project, worker_env, *, pool: tuple[str, ...], kill, waiting: bool = True
) -> tuple[JudgeServer, float, float]:
    """Judge 60 items through a real worker (``pool`` options), call ``kill(worker)`` once 10 verdicts are
    stored, start a second worker when ``kill`` returns True (it killed the whole worker), and wait for the
    run: with ``waiting``, through ``run_judge`` (which also revives a stalled run); without, by reading the
    run's row while nobody watches it (only the workers' own watch can revive it). Returns the server and
    (killed at, finished at)."""
    server = JudgeServer(latency=0.3).start()
    # Unwatched, one task holds the whole run: nothing queued is left for the new worker to find the work by.
    env = {**worker_env, **KILL_ENV, **({} if waiting else {"LARRY_JUDGE_CHUNK_SIZE": "100"})}
    make_items(project, [f"Answer {i}" for i in range(60)])
    use_judge(project, server.base_url, max_in_flight=IN_FLIGHT)

    def start_worker():
        return subprocess.Popen(
            worker_command(env["LARRY_CELERY_QUEUE"], *pool, "-l", "warning"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first, second = start_worker(), None
    if waiting:
        command = subprocess.Popen(
            [sys.executable, "manage.py", "run_judge", project.slug, "--timeout", "110"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    else:
        start = f"from judging.services import judge_run_create as c; c(project=Project.objects.get(pk={project.pk}))"
        start = "from annotations.models import Project; " + start
        subprocess.run([sys.executable, "manage.py", "shell", "-c", start], cwd=ROOT, env=env, check=True)
        command = None
    try:
        deadline = time.monotonic() + 60
        while Verdict.objects.count() < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Verdict.objects.count() >= 10, "the first worker judged nothing"
        killed_at = time.monotonic()
        if kill(first):
            first.wait(timeout=10)
            second = start_worker()
        assert Verdict.objects.count() < 60, "the run ended before the kill: nothing was tested"
        if command is not None:
            _out, err = command.communicate(timeout=120)
        else:
            err, deadline = "", time.monotonic() + 100
            while JudgeRun.objects.get().status != "finished" and time.monotonic() < deadline:
                time.sleep(0.2)
        finished_at = time.monotonic()
    finally:
        for process in (first, second, command):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        server.stop()
    assert command is None or command.returncode == 0, err
    return server, killed_at, finished_at


def _assert_nothing_lost_and_little_asked_twice(project, server, killed_at, finished_at):
    run = JudgeRun.objects.get()
    assert (run.status, run.items_done, run.items_error) == ("finished", 60, 0)
    # Every item has exactly one verdict, and no work is left behind.
    assert Verdict.objects.count() == 60
    assert set(Verdict.objects.values_list("item_id", flat=True)) == set(project.items.values_list("id", flat=True))
    assert not JudgeWork.objects.exists()
    # Within a minute of the kill, not the 300 s visibility timeout.
    assert finished_at - killed_at < 60
    # Only what the killed process had in flight was sent again (requests per item, at the server).
    asked = Counter(request["messages"][-1]["content"] for request in server.requests)
    assert len(asked) == 60
    assert sum(n - 1 for n in asked.values()) <= IN_FLIGHT, asked


def _pool_child(worker: subprocess.Popen) -> int:
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_a_pool_child_killed_mid_run_loses_nothing_and_the_run_finishes(project, worker_env):
    """SIGKILL the prefork pool's child (as the OOM killer does): its task is delivered again at once
    (``reject_on_worker_lost``), its leased items come back when their lease runs out."""

    def kill_child(worker):
        os.kill(_pool_child(worker), signal.SIGKILL)
        return False  # the worker itself lives on and forks a new child

    pool = ("--pool", "prefork", "-c", "1")
    server, killed_at, finished_at = _kill_mid_run(project, worker_env, pool=pool, kill=kill_child)
    _assert_nothing_lost_and_little_asked_twice(project, server, killed_at, finished_at)


def test_a_whole_worker_killed_mid_run_loses_nothing_and_a_new_worker_finishes_the_run(project, worker_env):
    """SIGKILL the whole worker; its task stays unacknowledged in Redis until the visibility timeout, but a
    new worker takes the dead one's items once their lease runs out: nobody waits on the run here (no page,
    no ``run_judge``), so only the workers' own watch (``larry_web.celery``) can re-queue its work."""

    def kill_worker(worker):
        worker.send_signal(signal.SIGKILL)
        return True

    server, killed_at, finished_at = _kill_mid_run(
        project, worker_env, pool=("--pool", "solo"), kill=kill_worker, waiting=False
    )
    _assert_nothing_lost_and_little_asked_twice(project, server, killed_at, finished_at)


def test_two_deliveries_of_one_training_set_build_on_real_workers_make_one_build(project, worker_env):
    """The same build task delivered twice at once (as Redis does when a visibility timeout passes while the
    first still runs): one worker process builds, the other finds the set claimed and looks again later."""
    env = {**worker_env, "LARRY_TRAINING_SET_LEASE_S": "3"}
    items = Item.objects.bulk_create(
        Item(project=project, external_id=f"i{n}", prompt=f"Question {n}?", response=f"Answer {n}.")
        for n in range(20_000)
    )
    GateDecision.objects.bulk_create(GateDecision(item=item, outcome="accept", basis="sme") for item in items)
    options = {"format": "chat", "validation_fraction": 0.1, "seed": 2}
    reference = training_set_build(training_set_id=TrainingSet.objects.create(project=project, **options).pk)
    training_set = TrainingSet.objects.create(project=project, **options)
    process = start_worker(env, "-c", "2", "-l", "info")
    try:
        send_twice = (
            "from distillation.tasks import build_training_set as t; "
            f"t.delay({training_set.pk}); t.delay({training_set.pk})"
        )
        subprocess.run([sys.executable, "manage.py", "shell", "-c", send_twice], cwd=ROOT, env=env, check=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            training_set.refresh_from_db()
            if training_set.status != TrainingSet.Status.BUILDING:
                break
            time.sleep(0.2)
        time.sleep(5)  # the second delivery's look again, a lease later, finds the set ready
    finally:
        process.terminate()
        log = process.communicate(timeout=30)[0]
    assert (training_set.status, training_set.error) == (TrainingSet.Status.READY, ""), log
    assert training_set.sha256 == reference.sha256 and training_set.rows_train == reference.rows_train, log
    assert training_set.rows.count() == training_set.rows_train + training_set.rows_validation == 20_000
    assert hashlib.sha256(b"".join(iter_file(training_set))).hexdigest() == reference.sha256
    # The task keeps the name it had in the judging app, so messages queued before the move still run.
    assert "judging.tasks.build_training_set[" in log and "retry: Retry in" in log, log
    assert log.count("succeeded") == 2, log
