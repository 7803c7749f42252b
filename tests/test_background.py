"""Follow-up work after the response without a broker (larry_web.background): what a web process enables."""

import logging
import threading

import pytest
from celery import shared_task
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotations import queue as sme_queue
from judging.models import GateDecision, RegateRequest
from larry_web import background
from tests.conftest import make_items, queue_all

pytestmark = pytest.mark.django_db(transaction=True)  # the background thread reads committed rows only


@pytest.fixture
def enabled():
    background.enable()
    yield
    background.wait_idle()
    background.disable()


def test_an_sme_decision_answers_before_the_gate_and_the_gate_follows(client, sme, project, enabled):
    item = make_items(project, ["an answer"])[0]
    queue_all(project)
    client.force_login(sme)
    leased = sme_queue.next_item(project=project, reviewer=sme)
    gate_started, release = threading.Event(), threading.Event()
    _holding.update(started=gate_started, release=release)
    background.enqueue(_hold, "held")  # the background thread is busy: the decision's gate must wait its turn
    assert gate_started.wait(10)
    response = client.post(
        reverse("annotations:review_decide", args=[project.slug, item.pk]),
        {"decision": "accept", "leased_at": leased.leased_at.isoformat()},
    )
    assert response.status_code in (200, 302)
    assert not GateDecision.objects.filter(item=item).exists()  # answered before the gate ran
    release.set()
    assert background.wait_idle(30)
    decision = GateDecision.objects.get(item=item)
    assert (decision.outcome, decision.basis) == ("accept", "sme")


def test_an_import_answers_with_its_items_stored_and_the_re_gating_follows(client, staff, project, enabled):
    client.force_login(staff)
    lines = b"".join(b'{"id": "x%d", "prompt": "p", "response": "r", "human_label": "reject"}\n' % i for i in range(5))
    upload = SimpleUploadedFile("items.jsonl", lines)
    response = client.post(reverse("annotations:api_import", args=[project.slug]), {"file": upload})
    assert response.status_code == 200 and response.json()["created"] == 5
    assert background.wait_idle(60)
    assert GateDecision.objects.filter(item__project=project, outcome="reject", basis="sme").count() == 5
    regate = RegateRequest.objects.get(project=project)
    assert regate.last_generation_done == regate.generation and regate.last_error == ""


def test_a_failing_task_is_logged_and_the_next_still_runs(enabled, caplog):
    _recorded.clear()
    with caplog.at_level(logging.ERROR, logger="larry_web.background"):
        background.enqueue(_fail, "boom")
        background.enqueue(_record, "after")
        assert background.wait_idle(10)
    assert "background task" in caplog.text and "boom" in caplog.text
    assert _recorded == ["after"]


def test_without_enable_it_runs_in_the_caller(db):
    _recorded.clear()
    background.enqueue(_record, "here")
    assert _recorded == ["here"]


_holding: dict = {}
_recorded: list = []


@shared_task
def _hold(_name: str) -> None:
    _holding["started"].set()
    _holding["release"].wait(30)


@shared_task
def _fail(message: str) -> None:
    raise RuntimeError(message)


@shared_task
def _record(value: str) -> None:
    _recorded.append(value)
