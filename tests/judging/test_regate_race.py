"""Re-gating one project from several places at once (an import, a rule edit, SME decisions)."""

import threading

import pytest
from django.db import connections

from judging.models import GateDecision, LabelFunction, RuleHit
from judging.services import gate_apply, label_functions_apply
from tests.conftest import make_items, run_concurrently

ITEMS = 3000


@pytest.mark.django_db(transaction=True)
def test_concurrent_rule_runs_and_gatings_of_one_project_queue_instead_of_failing(project):
    # Each call replaces the project's rows as a whole; before the advisory lock, two at once
    # inserted the same rows and one failed on a unique constraint (every time, at this size).
    make_items(project, [f"{'curt' if i % 3 == 0 else 'kind'} answer {i}" for i in range(ITEMS)])
    LabelFunction.objects.create(
        project=project, name="curt", kind="keywords", params={"keywords": ["curt"]}, reason="curt", active=True
    )
    errors = []
    for _ in range(3):
        for write in (label_functions_apply, gate_apply):
            errors += run_concurrently(lambda write: write(project=project), [(write,), (write,)])
    assert errors == []
    assert RuleHit.objects.count() == ITEMS // 3
    assert GateDecision.objects.count() == ITEMS
    assert GateDecision.objects.filter(outcome="reject", vetoed=True).count() == ITEMS // 3


def test_a_re_gating_that_loses_a_race_is_run_again(project, monkeypatch):
    from django.db import IntegrityError

    from judging import services, tasks

    make_items(project, ["fine answer"])
    calls = []
    real = services.project_regate

    def racing(*, project):
        calls.append(project.pk)
        if len(calls) == 1:  # as when an item is deleted while its decision is being stored
            raise IntegrityError('insert on "judging_gatedecision" violates foreign key constraint')
        return real(project=project)

    monkeypatch.setattr(services, "project_regate", racing)
    tasks.regate_project.apply(args=[project.pk], throw=False)  # as a worker runs it: retried, not raised
    assert calls == [project.pk, project.pk]
    assert GateDecision.objects.get().outcome == "pending"


@pytest.mark.django_db(transaction=True)
def test_deleting_a_rule_waits_for_a_rule_pass_that_is_storing_its_hits(project):
    import psycopg
    from django.db import connection

    from judging.services import RULE_HITS_LOCK, label_function_delete

    rule = LabelFunction.objects.create(
        project=project, name="curt", kind="keywords", params={"keywords": ["curt"]}, reason="curt", active=True
    )
    db = connection.settings_dict
    deleted = threading.Event()

    def delete() -> None:
        try:
            label_function_delete(rule=rule)
            deleted.set()
        finally:
            connections.close_all()

    # Another connection stands for label_functions_apply between reading the rules and committing its hits.
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"]) as rule_pass:
        rule_pass.execute("SELECT pg_advisory_xact_lock(%s, %s)", [RULE_HITS_LOCK, project.pk])
        thread = threading.Thread(target=delete)
        thread.start()
        assert not deleted.wait(0.5)  # the deletion waits ...
        rule_pass.commit()
        assert deleted.wait(10)  # ... until the pass has committed
    thread.join()
    assert not LabelFunction.objects.exists()


def test_re_gatings_asked_for_while_one_waits_cost_one(project, monkeypatch, django_capture_on_commit_callbacks):
    from judging import services

    make_items(project, ["fine answer"])
    runs = []
    real = services.project_regate
    monkeypatch.setattr(services, "project_regate", lambda *, project: runs.append(project.pk) or real(project=project))
    # Ten imports in a row queue ten tasks before the worker takes the first (captured here, run after).
    with django_capture_on_commit_callbacks() as queued:
        generations = [services.regate_request(project.pk) for _ in range(10)]
    assert generations == list(range(1, 11)) and len(queued) == 10
    for task in queued:
        task()
    assert runs == [project.pk]  # only the last request's task re-gated; the others saw it coming and skipped
    assert GateDecision.objects.count() == 1
    # A request made after that one ran is served too.
    with django_capture_on_commit_callbacks(execute=True):
        services.regate_request(project.pk)
    assert runs == [project.pk, project.pk]
