"""A judge run's work rows: its scope, leases, and a stalled run noticed and queued again (in-process tasks;
the worker-kill tests in tests/test_worker.py run the same through real workers)."""

import os
import subprocess
import sys

import pytest
from django.urls import reverse
from django.utils import timezone

from judging.models import JudgeRun, JudgeWork, Verdict
from judging.selectors import run_stalled_since
from judging.services import judge_run_create, judge_work_lease, judge_work_release, judge_work_renew
from tests.conftest import ROOT, make_items


def test_a_run_over_chosen_items_judges_only_those(llm_project, judge_server, django_capture_on_commit_callbacks):
    items = make_items(llm_project, ["a", "b", "c", "d WRONG"])
    chosen = [items[1].pk, items[3].pk]
    with django_capture_on_commit_callbacks() as callbacks:
        run = judge_run_create(project=llm_project, item_ids=chosen)
    assert run.items_total == 2
    assert sorted(JudgeWork.objects.filter(run=run).values_list("item_id", flat=True)) == chosen
    with django_capture_on_commit_callbacks(execute=True):
        for callback in callbacks:
            callback()
    run.refresh_from_db()
    assert (run.status, run.items_total, run.items_done) == ("finished", 2, 2)
    assert dict(Verdict.objects.filter(run=run).values_list("item__response", "verdict")) == {
        "b": "accept",
        "d WRONG": "reject",
    }
    assert len(judge_server.requests) == 2
    assert not JudgeWork.objects.filter(run=run).exists()


@pytest.fixture
def queued_run(llm_project, django_capture_on_commit_callbacks):
    """A run with work rows for 3 items whose start task never ran (as when its worker died)."""
    make_items(llm_project, ["a", "b", "c"])
    with django_capture_on_commit_callbacks():
        run = judge_run_create(project=llm_project)
    JudgeRun.objects.filter(pk=run.pk).update(status="running", started_at=timezone.now())
    run.refresh_from_db()
    return run


def test_leases_are_exclusive_renewed_and_released(queued_run, settings):
    first, others = judge_work_lease(run_id=queued_run.pk, worker="w1", limit=2)
    assert len(first) == 2 and others == 0
    second, others = judge_work_lease(run_id=queued_run.pk, worker="w2", limit=5)
    assert [item.pk for item in second] != [item.pk for item in first] and len(second) == 1
    nothing, others = judge_work_lease(run_id=queued_run.pk, worker="w3", limit=5)
    assert (nothing, others) == ([], 3)  # all held under live leases
    assert judge_work_renew(run_id=queued_run.pk, worker="w1", item_ids=[item.pk for item in first])
    judge_work_release(run_id=queued_run.pk, worker="w1", item_ids=[first[0].pk])
    again, _others = judge_work_lease(run_id=queued_run.pk, worker="w3", limit=5)
    assert [item.pk for item in again] == [first[0].pk]
    # A lease that ran out (its worker died) is taken by the next worker.
    JudgeWork.objects.filter(run=queued_run, leased_by="w2").update(leased_until=timezone.now())
    taken, _others = judge_work_lease(run_id=queued_run.pk, worker="w4", limit=5)
    assert [item.pk for item in taken] == [second[0].pk]
    assert JudgeWork.objects.get(item=second[0]).attempts == 2


def test_a_stalled_run_is_said_on_its_page_and_queued_again(client, staff, queued_run, settings, monkeypatch):
    from judging import tasks

    settings.LARRY_JUDGE_LEASE_S = 30
    assert run_stalled_since(queued_run) is None  # started a moment ago
    long_ago = timezone.now() - timezone.timedelta(minutes=5)
    JudgeRun.objects.filter(pk=queued_run.pk).update(started_at=long_ago, progress_at=long_ago)
    JudgeWork.objects.filter(run=queued_run).update(leased_by="dead", leased_until=long_ago)
    queued_run.refresh_from_db()
    assert run_stalled_since(queued_run) is not None
    # A live lease is a live worker: not stalled.
    live = timezone.now() + timezone.timedelta(seconds=20)
    JudgeWork.objects.filter(run=queued_run).update(leased_until=live)
    assert run_stalled_since(queued_run) is None
    JudgeWork.objects.filter(run=queued_run).update(leased_until=long_ago)

    client.force_login(staff)
    url = reverse("judging:run_detail", args=[queued_run.project.slug, queued_run.pk])
    queued = []
    monkeypatch.setattr(tasks.judge_chunk, "delay", lambda run_id, item_ids=None: queued.append(run_id))
    page = client.get(url).content.decode()
    assert "Stalled since" in page and "queued again" in page
    assert queued == [queued_run.pk]  # one task for 3 items
    client.get(url, HTTP_HX_REQUEST="true")
    assert queued == [queued_run.pk]  # not again within a lease of the revival
    monkeypatch.undo()

    # Once revived for real (in-process tasks), the run finishes.
    JudgeRun.objects.filter(pk=queued_run.pk).update(progress_at=long_ago)
    client.get(url)
    queued_run.refresh_from_db()
    assert (queued_run.status, queued_run.items_done) == ("finished", 3)
    assert not JudgeWork.objects.filter(run=queued_run).exists()


def test_an_llm_run_works_on_the_embedded_sqlite_default(tmp_path, judge_server):
    """The README's defaults (SQLite, no broker) with an LLM judge: the work rows' INSERT ... SELECT must be SQL
    that SQLite reads too (the other tests run on PostgreSQL)."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'larry.sqlite3'}",
        "LARRY_JUDGE_BASE_URL": judge_server.base_url,
        "LARRY_JUDGE_MODEL": "test-judge",
    }
    env.pop("CELERY_BROKER_URL", None)

    def manage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    manage("migrate", "--noinput", "-v0")
    manage("import_items", "copilot", str(ROOT / "examples" / "support_copilot.jsonl"), "--no-gate")
    assert "finished: 60 judged, 0 errors" in manage("run_judge", "copilot", "--timeout", "120")
