"""A certificate chosen while the broker is down, on PostgreSQL with the app under gunicorn (as in production):
the POST answers 201, not a server error, the certificate is stored but not applied, the re-gating stays
requested and not done, and the export refuses (409) rather than ship the judge accepts it holds back; a
re-gate from the project page, run by a real Celery worker once a broker answers, applies it and the export
then ships the certified set."""

import json

import numpy as np
import pytest
import requests

from annotations.selectors import ground_truth
from judging.models import Certification, GateDecision, RegateRequest
from tests.judging.test_certification_worker import Api, regated, serve
from tests.judging.test_estimate import build

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def logged_in(base: str, username: str, password: str) -> requests.Session:
    """A browser-like session of ``username`` on the app at ``base`` (login form, CSRF cookie)."""
    session = requests.Session()
    session.get(f"{base}/login/", timeout=30)
    answer = session.post(
        f"{base}/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
        timeout=30,
    )
    assert answer.status_code == 200 and "sessionid" in session.cookies, answer.text[:2000]
    return session


def test_a_certificate_chosen_while_the_broker_is_down_blocks_the_export_until_re_gated(
    project, lead, staff, worker_env, worker
):
    p_drawn = np.random.default_rng(7).uniform(0.05, 0.95, 300)
    build(project, lead, n_items=300, size=150, seed=7, labels=np.where(p_drawn >= 0.7, "accept", "reject"))
    truth = ground_truth(project=project)
    judge_accepts = set(
        GateDecision.objects.filter(item__project=project, outcome="accept")
        .exclude(item_id__in=truth)
        .values_list("item_id", flat=True)
    )
    assert judge_accepts
    asked = RegateRequest.objects.get(project=project).generation

    with serve({**worker_env, "CELERY_BROKER_URL": DEAD_BROKER}) as down:
        made = Api(f"{down}/api/projects/support", lead).post("/certificate/", json={"target": 0.8, "delta": 0.1})
        assert made.status_code == 201, made.text[:2000]
        cert = made.json()["certificate"]
        assert cert["applied"]["applied"] is False and cert["held_back"]["applied"] is False
        assert Certification.objects.get().pk == cert["id"]
        row = RegateRequest.objects.get(project=project)
        assert (row.generation, row.last_generation_done) == (asked + 1, asked)
        refused = Api(f"{down}/api/projects/support", lead).get("/export/chat.jsonl")
        assert refused.status_code == 409 and "still applying the certificate" in refused.json()["detail"]
        page = logged_in(down, "staff", "staff-pass-123").get(f"{down}/projects/support/", timeout=30).text
        assert "Not applied yet." in page and f"{asked + 1} requested, {asked} done (not done yet" in page
        assert "Apply rules and re-gate" in page

    # The broker is back: a member of staff re-gates from the project page, and the worker applies it.
    with serve(worker_env) as web:
        check_re_gated_by_the_worker(project, lead, web, worker, judge_accepts, truth)


def check_re_gated_by_the_worker(project, lead, web, worker, judge_accepts, truth) -> None:
    session = logged_in(web, "staff", "staff-pass-123")
    again = session.post(
        f"{web}/projects/support/regate/", data={"csrfmiddlewaretoken": session.cookies["csrftoken"]}, timeout=30
    )
    assert again.status_code == 200 and "Re-gating queued" in again.text
    regated(project, worker)
    made = Certification.objects.get()
    held = {pk for pk in judge_accepts if GateDecision.objects.get(item_id=pk).outcome == "pending"}
    assert held and len(judge_accepts) - len(held) == made.certified
    as_lead = Api(f"{web}/api/projects/support", lead)
    assert as_lead.get("/certificate/").json()["certificate"]["applied"]["applied"] is True
    exported = as_lead.get("/export/chat.jsonl")
    assert exported.status_code == 200
    prompts = {json.loads(line)["messages"][0]["content"] for line in exported.text.splitlines()}
    accepted = GateDecision.objects.filter(item__project=project, outcome="accept")
    assert len(prompts) == accepted.count() == sum(label == "accept" for label in truth.values()) + made.certified
    assert "judging.tasks.regate_project[" in worker.log()
