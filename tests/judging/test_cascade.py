"""A two-tier cascade end to end: Baby Larry decides what it is sure of, the big judge what Baby Larry escalates,
the SMEs what neither is sure of.

Both judges are the test judge server (tests/judge_server.py) playing two models with different errors: each
item's text carries ``[baby p-accept=…]`` and ``[big p-accept=…]``, which set that model's verdict and the
log-probabilities it returns. Runs go through ``manage.py run_judge`` to a real Celery worker over Redis, on
PostgreSQL; each is calibrated on the SME labels when it finishes, and the thresholds are chosen from those labels
(``services.gating_policy_compute``, Jung et al. 2025).
"""

import random
import re
import subprocess
import sys

import pytest

from annotations.models import Item, Review, Slot
from annotations.queue import in_sme_queue, next_item
from judging import gate
from judging.models import GateDecision, JudgeEndpoint, JudgeRun, Verdict
from judging.selectors import gating_policy, policy_certainty
from judging.services import escalated_item_ids, gating_policy_compute
from tests.conftest import ROOT

pytestmark = [pytest.mark.worker, pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

N, LABELLED = 240, 150
TARGET, RISK = 0.9, 0.1


def judges(seed: int = 7) -> list[tuple[str, float, float]]:
    """``(truth, baby's P(accept), big's P(accept))`` per item. Baby Larry is sure and right on about 40 % of
    items and a coin toss on the rest; the big judge is sure and right on about 90 %, and unsure and wrong on
    the rest."""
    rng = random.Random(seed)
    rows = []
    for i in range(N):
        truth = "reject" if i % 3 == 0 else "accept"
        sign = 1 if truth == "accept" else -1
        if rng.random() < 0.4:
            baby = 0.5 + sign * rng.uniform(0.45, 0.49)
        else:
            baby = 0.5 + rng.choice((1, -1)) * rng.uniform(0.02, 0.15)
        big = 0.5 + sign * rng.uniform(0.45, 0.49) if rng.random() < 0.9 else 0.5 - sign * rng.uniform(0.05, 0.2)
        rows.append((truth, round(baby, 3), round(big, 3)))
    return rows


def run_judge(worker_env, slug: str, *options: str) -> JudgeRun:
    command = subprocess.run(
        [sys.executable, "manage.py", "run_judge", slug, "--timeout", "150", *options],
        cwd=ROOT,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert command.returncode == 0, command.stderr[-3000:]
    run_id = int(re.search(r"run (\d+) finished", command.stdout).group(1))
    return JudgeRun.objects.get(pk=run_id)


def test_a_two_tier_cascade_sends_the_big_judge_only_what_baby_larry_escalates(
    project, sme, judge_server, worker_env, worker
):
    rows = judges()
    items = Item.objects.bulk_create(
        Item(
            project=project,
            external_id=f"c{i}",
            prompt=f"Question {i}?",
            response=f"Answer {i} [baby p-accept={baby}] [big p-accept={big}]",
        )
        for i, (_, baby, big) in enumerate(rows)
    )
    truth = {item.pk: rows[i][0] for i, item in enumerate(items)}
    labelled = [item.pk for item in items[:LABELLED]]
    Review.objects.bulk_create(Review(item_id=pk, reviewer=sme, decision=truth[pk]) for pk in labelled)
    JudgeEndpoint.objects.create(
        project=project, name="Baby Larry", base_url=judge_server.base_url, model="baby", is_default=True
    )
    JudgeEndpoint.objects.create(project=project, name="big judge", base_url=judge_server.base_url, model="big")

    # Tier 1 judges everything; its threshold is chosen on the SME labels.
    baby_run = run_judge(worker_env, project.slug)
    assert baby_run.items_total == N and Verdict.objects.filter(run=baby_run).exclude(verdict="").count() == N
    assert baby_run.calibration.get("status") == "calibrated", baby_run.calibration
    policy = gating_policy_compute(project=project, runs=[baby_run], target=TARGET, risk=RISK)
    (tier1,) = policy.tiers.all()
    assert tier1.decides and tier1.threshold is not None, tier1.note

    # Tier 2 judges only what tier 1 leaves undecided, through the same command and worker.
    escalated = escalated_item_ids(project)
    assert 0 < len(escalated) < N
    big_run = run_judge(worker_env, project.slug, "--endpoint", "big judge", "--escalate")
    assert big_run.model == "big" and big_run.items_total == len(escalated)
    big_asked = [
        int(re.search(r"Answer (\d+) ", body["messages"][-1]["content"]).group(1))
        for body in judge_server.requests
        if body.get("model") == "big"
    ]
    assert sorted(items[i].pk for i in big_asked) == sorted(escalated), "the big judge saw only escalated items"
    assert len(big_asked) == len(escalated), "each escalated item was asked once"

    # The cascade: both thresholds from the labels that reach each tier; the rest goes to the SMEs.
    policy = gating_policy_compute(project=project, runs=[baby_run, big_run], target=TARGET, risk=RISK)
    tier1, tier2 = policy.tiers.all()
    assert tier1.run_id == baby_run.pk and tier2.run_id == big_run.pk
    assert tier1.decides and tier2.decides, (tier1.note, tier2.note)
    decisions = {d.item_id: d for d in GateDecision.objects.filter(item__project=project)}
    by_tier = {1: [], 2: []}
    for item_id, decision in decisions.items():
        if decision.basis == gate.Basis.TIER:
            by_tier[decision.tier].append(item_id)
    assert by_tier[1] and by_tier[2], "each tier decided some items"
    for tier, decided in by_tier.items():
        unlabelled = [i for i in decided if i not in set(labelled)]
        agree = sum(decisions[i].outcome == truth[i] for i in unlabelled) / len(unlabelled)
        assert agree >= TARGET, f"tier {tier} agrees with the truth on {agree:.2f} of {len(unlabelled)} items"

    # What neither tier is sure of is pending, queued for the SMEs, least certain first.
    pending = [i for i, d in decisions.items() if d.outcome == gate.Outcome.PENDING]
    assert pending and all(i not in set(labelled) for i in pending)
    assert set(Item.objects.filter(in_sme_queue(), pk__in=pending).values_list("pk", flat=True)) == set(pending)
    certainty = policy_certainty(project, policy=gating_policy(project))
    slots = Slot.objects.filter(item_id__in=pending, done=False).order_by("-priority", "id")
    order = list(slots.values_list("item_id", flat=True))
    assert [round(certainty.get(i, 0.0), 9) for i in dict.fromkeys(order)] == sorted(
        round(certainty.get(i, 0.0), 9) for i in pending
    )
    first = next_item(project=project, reviewer=sme)
    assert certainty.get(first.pk, 0.0) == min(certainty.get(i, 0.0) for i in pending)
