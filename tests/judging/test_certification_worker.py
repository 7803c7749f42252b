"""The designs, the estimate, the certificate and its snapshot end to end over REST, on PostgreSQL, with a real
Celery worker over Redis and the app served by gunicorn in a process of its own (as in production): a lead
imports, draws a uniform sample, the SMEs decide, a judge run (the test judge server) becomes the gating
policy, the estimate has its n and intervals, the certificate holds back the uncertified judge accepts (the
worker re-gates and queues them for the SMEs), a snapshot built by the worker carries the certificate, and
audit and confidence-weighted draws record their inclusion probabilities."""

import contextlib
import itertools
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from rest_framework.authtoken.models import Token

from annotations.models import Item, SampleMembership
from annotations.queue import in_sme_queue, next_item
from annotations.selectors import ground_truth
from annotations.services import review_submit
from distillation.models import TrainingSet
from judging import gate
from judging.certify import p_accept_by_item, project_certificate
from judging.estimate import accepted_set_precision
from judging.models import GateDecision, JudgeRun, RegateRequest
from judging.selectors import gating_policy, policy_certainty
from tests.conftest import ROOT, use_judge

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

N_ITEMS, UNIFORM = 300, 150


@contextlib.contextmanager
def serve(env: dict):
    """The app under gunicorn on a free port of 127.0.0.1 with ``env``; yields the base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "larry_web.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/login/", timeout=10).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("gunicorn did not answer: " + process.communicate(timeout=10)[1])
    try:
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture
def web(worker_env, worker):
    """The app under gunicorn, with the worker's broker, queue and database: its tasks go to the real worker.
    Yields the base URL."""
    with serve(worker_env) as url:
        yield url


def wait_for(check, what: str, worker, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"waited {timeout} s for {what}\n{worker.log()}")


def regated(project, worker):
    """Wait until the worker has done every re-gating asked for so far."""

    def done():
        row = RegateRequest.objects.filter(project=project).first()
        assert row is None or not row.last_error, row.last_error
        return row is not None and row.last_generation_done >= row.generation

    wait_for(done, "the re-gating", worker)


def test_designs_estimate_certificate_and_snapshot_over_rest_with_a_real_worker(
    project, lead, staff, sme, judge_server, web, worker
):
    rng = np.random.default_rng(11)
    p = np.round(rng.uniform(0.05, 0.95, N_ITEMS), 2)
    # The SMEs mostly accept what the judge is sure of (p >= 0.65) and mostly reject the rest.
    human = np.where(rng.uniform(size=N_ITEMS) < np.where(p >= 0.65, 0.97, 0.15), "accept", "reject")
    lines = [
        {
            "id": f"w{i}",
            "prompt": f"Question {i}?",
            "response": f"Answer {i} [p-accept={p[i]}]" + (" WRONG" if p[i] < 0.5 else ""),
        }
        for i in range(N_ITEMS)
    ]
    use_judge(project, judge_server.base_url)
    as_lead = Api(f"{web}/api/projects/support", lead)
    as_staff = Api(f"{web}/api/projects/support", staff)

    # Import, then a uniform draw: n/N each.
    body = "\n".join(json.dumps(line) for line in lines).encode()
    imported = as_lead.post("/import/", files={"file": ("items.jsonl", body)})
    assert imported.status_code == 200 and imported.json()["created"] == N_ITEMS, imported.text
    drawn = as_lead.post("/samples/", json={"size": UNIFORM, "design": "uniform", "seed": 7})
    assert drawn.status_code == 201 and drawn.json()["drawn"] == UNIFORM, drawn.text
    members = all_pages(as_lead, f"/samples/{drawn.json()['id']}/members/")
    assert len(members) == UNIFORM and {m["inclusion_probability"] for m in members} == {UNIFORM / N_ITEMS}

    # The SMEs decide every drawn item on the review queue.
    index = {item.pk: int(item.external_id[1:]) for item in Item.objects.filter(project=project)}
    while (item := next_item(project=project, reviewer=sme)) is not None:
        decision = human[index[item.pk]]
        reason = "" if decision == "accept" else project.reject_reasons[0]
        review_submit(item=item, reviewer=sme, decision=decision, reason=reason, leased_at=item.leased_at)
    assert len(ground_truth(project=project)) == UNIFORM

    # A judge run on the worker (calibrated on the SME labels when it finishes), made the gating policy.
    started = as_staff.post("/runs/", json={})
    assert started.status_code == 201, started.text
    run_id = started.json()["id"]
    run = wait_for(
        lambda: JudgeRun.objects.filter(pk=run_id, status="finished", calibration__status="calibrated").first(),
        "the judge run and its calibration",
        worker,
    )
    assert run.items_done == N_ITEMS and run.items_error == 0
    chosen = as_lead.post("/gating-policy/", json={"tiers": [{"run": run_id, "threshold": None}]})
    assert chosen.status_code in (200, 201), chosen.text
    regated(project, worker)
    accepts_before = set(
        GateDecision.objects.filter(item__project=project, outcome="accept").values_list("item_id", flat=True)
    )

    # The estimate: n and 95 % intervals beside each figure, the same as computed here from the same rows.
    estimate = as_lead.get("/estimate/").json()
    assert estimate == json.loads(json.dumps(accepted_set_precision(project), default=str))
    truth = ground_truth(project=project)
    policy_accepts = {i for i, item in enumerate(p) if item >= 0.5}
    labelled_accepts = [pk for pk in truth if index[pk] in policy_accepts]
    ppi, classical = estimate["accepted"]["ppi"], estimate["accepted"]["classical"]
    assert ppi["n"] == len(labelled_accepts) == classical["n"] and ppi["N"] == len(policy_accepts) - len(
        labelled_accepts
    )
    assert 0 <= ppi["low"] < ppi["estimate"] < ppi["high"] <= 1 and 0 <= classical["low"] < classical["high"] <= 1
    k = sum(truth[pk] == "accept" for pk in labelled_accepts)
    assert classical["estimate"] == pytest.approx(k / len(labelled_accepts))

    # Certify: the same certificate as judging.certify computes on these rows; the worker re-gates.
    want = project_certificate(project, target=0.85, delta=0.1)["certificate"]
    made = as_lead.post("/certificate/", json={"target": 0.85, "delta": 0.1})
    assert made.status_code == 201, made.text
    cert = made.json()["certificate"]
    assert (cert["threshold"], cert["n"], cert["bound"], cert["certified"]) == (
        want.threshold,
        want.n,
        pytest.approx(want.bound),
        want.certified,
    )
    assert want.threshold is not None and 0 < want.certified
    assert cert["since"]["stale"] is False and cert["n_labelled"] == want.n_labelled
    regated(project, worker)
    p_accept = p_accept_by_item(project, gating_policy(project))
    rows = {row.item_id: row for row in GateDecision.objects.filter(item__project=project)}
    judge_accepts = [pk for pk in accepts_before if pk not in truth]
    held = [pk for pk in judge_accepts if p_accept[pk] < want.threshold]
    certified = [pk for pk in judge_accepts if p_accept[pk] >= want.threshold]
    assert held and len(certified) == want.certified
    assert all(rows[pk].outcome == "pending" and rows[pk].reasons == [gate.CERTIFICATE_REASON] for pk in held)
    assert all(rows[pk].outcome == "accept" for pk in certified)
    # ... and the held-back items went to the SME queue, the least certain first.
    queued = dict(Item.objects.filter(pk__in=held).values_list("id", in_sme_queue()))
    assert all(queued.values())
    first = next_item(project=project, reviewer=sme).pk  # calibration may tie items: any of the least certain
    assert first in held and p_accept[first] == min(p_accept[pk] for pk in held)
    assert as_lead.get("/certificate/").json()["certificate"]["held_back"] == {
        "applied": True,
        "pending": len(held),
        "queued": len(held),
        "statement": "",
    }

    # A snapshot built by the worker carries the certificate; its rows are the accepted set, none held back.
    snap = as_lead.post("/training-sets/", json={"format": "chat", "validation_fraction": 0})
    assert snap.status_code == 201, snap.text
    snap_id = snap.json()["id"]
    ready = wait_for(
        lambda: (got := as_lead.get(f"/training-sets/{snap_id}/").json())["status"] == "ready" and got,
        "the training set",
        worker,
    )
    lineage = ready["lineage"]["certificate"]
    assert lineage["certified"] is True and lineage["certification"] == cert["id"]
    assert (lineage["threshold"], lineage["items_certified"], lineage["sme_labels"]["n"]) == (
        want.threshold,
        want.certified,
        want.n,
    )
    assert TrainingSet.objects.get(pk=snap_id).report["certificate"] == lineage
    exported = as_lead.get(f"/training-sets/{snap_id}/download/")
    prompts = {json.loads(line)["messages"][-2]["content"] for line in exported.text.splitlines()}
    accepted_now = {pk for pk, row in rows.items() if row.outcome == "accept"}
    assert len(accepted_now) == sum(truth[pk] == "accept" for pk in truth) + want.certified
    assert prompts == {f"Question {index[pk]}?" for pk in accepted_now}
    assert not prompts & {f"Question {index[pk]}?" for pk in held}
    # The estimate now covers the certified set, rectified by the SME labels at or above the threshold only.
    after = as_lead.get("/estimate/").json()["accepted"]
    above = [pk for pk in labelled_accepts if p_accept[pk] >= want.threshold]
    assert (after["size"], after["labelled"], after["estimated"]) == (len(accepted_now), len(above), want.certified)

    # An audit of the accepted set: a uniform sample of it, n/N each.
    drawn_before = set(SampleMembership.objects.filter(draw__project=project).values_list("item_id", flat=True))
    population = [pk for pk in accepted_now if pk not in drawn_before]  # queued or not, never drawn
    audit = as_lead.post("/samples/", json={"size": 10, "design": "audit", "seed": 3}).json()
    audit_members = all_pages(as_lead, f"/samples/{audit['id']}/members/")
    assert audit["population"] == len(population) and len(audit_members) == 10
    assert {m["inclusion_probability"] for m in audit_members} == {10 / len(population)}
    assert {m["item"] for m in audit_members} <= set(population)

    # A confidence-weighted draw: a uniform slice, the rest likelier where the policy is least sure.
    drawn_before = set(SampleMembership.objects.filter(draw__project=project).values_list("item_id", flat=True))
    undrawn = set(Item.objects.filter(project=project).values_list("id", flat=True)) - drawn_before
    weighted = as_lead.post("/samples/", json={"size": 30, "design": "confidence", "uniform_share": 0.25, "seed": 4})
    assert weighted.status_code == 201, weighted.text
    weighted = weighted.json()
    got = all_pages(as_lead, f"/samples/{weighted['id']}/members/")
    assert len(got) == 30 and sum(m["uniform_slice"] for m in got) == 8
    floor = 8 / weighted["population"]
    assert all(floor < m["inclusion_probability"] <= 1 for m in got)
    sure = policy_certainty(project)  # how sure the policy is of its own verdict, as the design weighs items
    certainty = {m["item"]: sure.get(m["item"], 0.5) for m in got}
    by_certainty = sorted(got, key=lambda m: certainty[m["item"]])
    assert all(
        a["inclusion_probability"] >= b["inclusion_probability"] - 1e-12 for a, b in itertools.pairwise(by_certainty)
    )
    assert weighted["population"] == len(undrawn) and set(certainty) <= undrawn
    mean_all = np.mean([sure.get(pk, 0.5) for pk in undrawn])
    assert np.mean(list(certainty.values())) < mean_all
    log = worker.log()
    assert "judging.tasks.regate_project[" in log and "judging.tasks.build_training_set[" in log, log


class Api(requests.Session):
    """REST calls as ``user`` (its token) to paths under ``base``."""

    def __init__(self, base: str, user) -> None:
        super().__init__()
        self.base = base
        self.headers["Authorization"] = f"Token {Token.objects.get_or_create(user=user)[0].key}"

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", 60)
        return super().request(method, url if url.startswith("http") else self.base + url, *args, **kwargs)


def all_pages(client: Api, path: str) -> list[dict]:
    rows, page = [], client.get(path, params={"page_size": 1000}).json()
    while True:
        rows += page["results"]
        if not page["next"]:
            return rows
        page = client.get(page["next"]).json()
