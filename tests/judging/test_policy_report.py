"""The policy page's figures (``selectors.policy_report``): what each tier decides, how well, at what cost.

Numbers chosen to check by hand. 40 items; the SMEs labelled 0-19 (even accept, odd reject).
Tier 1 ("baby", sure at 0.9) is sure of items 0-11 and 24-35 and unsure of the rest; tier 2 ("big", sure at
0.8) judged only the 16 items tier 1 escalates (12-23, 36-39), and is unsure of 38 and 39.
Every verdict used 1,000 prompt and 100 completion tokens.
"""

import math
from decimal import Decimal

import pytest
from django.urls import reverse

from annotations.models import Review
from judging.models import GateDecision, JudgeRun, Verdict
from judging.selectors import funnel, policy_report
from judging.services import gate_apply, gating_policy_set, sme_queue_prioritise
from tests.conftest import make_items

N = 40
SME = {i: "accept" if i % 2 == 0 else "reject" for i in range(20)}
TIER1_SURE = set(range(12)) | set(range(24, 36))
ESCALATED = [i for i in range(N) if i not in TIER1_SURE]
TIER1_WRONG = {10, 11}  # of its 12 SME items it would decide: 10 agree
TIER2_WRONG = {19}  # of its 8 SME items (12-19): 7 agree
TIER2_UNSURE = {38, 39}


def other(verdict: str) -> str:
    return "reject" if verdict == "accept" else "accept"


def make_run(project, model, prices, item_ids, wrong, unsure, threshold_sure) -> JudgeRun:
    items = list(project.items.order_by("id"))
    run = JudgeRun.objects.create(
        project=project,
        backend="openai",
        model=model,
        base_url="http://127.0.0.1:9/v1",
        status="finished",
        tokens_in=1000 * len(item_ids),
        tokens_out=100 * len(item_ids),
        config={"price_in_per_million": prices[0], "price_out_per_million": prices[1]},
    )
    rows = []
    for i in item_ids:
        verdict = SME.get(i, "accept" if i % 3 else "reject")
        verdict = other(verdict) if i in wrong else verdict
        sure = 0.6 if i in unsure else threshold_sure
        p = sure if verdict == "accept" else 1 - sure
        rows.append(
            Verdict(
                run=run,
                item=items[i],
                verdict=verdict,
                confidence=p,
                confidence_calibrated=p,
                tokens_in=1000,
                tokens_out=100,
            )
        )
    Verdict.objects.bulk_create(rows)
    return run


@pytest.fixture
def cascade(project, lead):
    items = make_items(project, [f"answer {i}" for i in range(N)])
    for i, decision in SME.items():
        Review.objects.create(item=items[i], decision=decision, origin="import")
    baby = make_run(
        project, "baby", ("0.1", "0.5"), range(N), TIER1_WRONG, set(range(N)) - TIER1_SURE, threshold_sure=0.95
    )
    big = make_run(project, "big", ("2", "10"), ESCALATED, TIER2_WRONG, TIER2_UNSURE, threshold_sure=0.9)
    gating_policy_set(project=project, tiers=[(baby, 0.9), (big, 0.8)], user=lead)
    gate_apply(project=project)
    sme_queue_prioritise(project=project)
    return baby, big


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval written out (Wilson 1927), to check scipy's."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_each_tier_has_its_share_agreement_tokens_and_cost(project, cascade):
    baby, big = cascade
    report = policy_report(project)
    assert report["items"] == N
    first, second = report["tiers"]
    assert (first["run"], second["run"]) == (baby, big)
    # Tier 1 decides the 12 unlabelled items it is sure of (24-35), tier 2 the unlabelled escalated ones it is
    # sure of (20-23, 36, 37); SME ground truth decides 0-19; 38 and 39 are left to the SMEs.
    assert (first["decided"], first["share"]) == (12, 12 / 40)
    assert (second["decided"], second["share"]) == (6, 6 / 40)
    assert report["sme"] == {"by_sme": 20, "pending": 2, "queued": 2}

    a1 = first["agreement"]
    assert (a1["n"], a1["agree"], a1["too_few"]) == (12, 10, False)
    assert a1["rate"] == pytest.approx(10 / 12)
    assert a1["ci"] == pytest.approx(wilson(10, 12), abs=1e-6)
    assert a1["ci"] == pytest.approx((0.5519, 0.9530), abs=1e-3)
    a2 = second["agreement"]
    assert (a2["n"], a2["agree"], a2["too_few"]) == (8, 7, True)  # below 10: "too few to say"

    # 40 x 1,000 prompt tokens at 0.1 per million + 40 x 100 at 0.5: 0.004 + 0.002.
    assert (first["tokens_in"], first["tokens_out"], first["cost"]) == (40_000, 4_000, Decimal("0.006"))
    # 16 x 1,000 at 2 per million + 16 x 100 at 10: 0.032 + 0.016.
    assert (second["tokens_in"], second["tokens_out"], second["cost"]) == (16_000, 1_600, Decimal("0.048"))
    assert (first["sent"], second["sent"]) == (40, 16)
    assert report["cascade_cost"] == Decimal("0.054")

    # All 40 items to the big judge: 0.003 per item (each verdict's tokens) x 40 = 0.12, saving 0.066.
    big_judge = report["all_to_big_judge"]
    assert big_judge["run"] == big and big_judge["per_item"]["n"] == 16
    assert big_judge["per_item"]["mean"] == pytest.approx(0.003)
    assert big_judge["estimate"] == pytest.approx(0.12)
    assert big_judge["estimate_ci"] == pytest.approx((0.12, 0.12))  # every item cost the same
    assert big_judge["saving"] == pytest.approx(0.066)


def test_few_shot_items_are_left_out_of_a_tiers_agreement(project, cascade):
    baby, _ = cascade
    shown = list(project.items.order_by("id").values_list("id", flat=True)[:2])
    JudgeRun.objects.filter(pk=baby.pk).update(config={**baby.config, "few_shot_item_ids": shown})
    a1 = policy_report(project)["tiers"][0]["agreement"]
    assert (a1["n"], a1["agree"], a1["few_shot_excluded"]) == (10, 8, 2)


def test_without_a_policy_the_report_says_only_what_the_smes_decide(project):
    items = make_items(project, ["a", "b", "c"])
    Review.objects.create(item=items[0], decision="accept", origin="import")
    gate_apply(project=project)
    report = policy_report(project)
    assert report["policy"] is None and report["tiers"] == [] and report["all_to_big_judge"] is None
    assert report["sme"] == {"by_sme": 1, "pending": 2, "queued": 0}


def test_the_funnel_counts_what_each_tier_decided(client, lead, project, cascade):
    assert funnel(project)["by_tier"] == [{"tier": 1, "decided": 12}, {"tier": 2, "decided": 6}]
    client.force_login(lead)
    page = client.get(project.get_absolute_url()).content.decode()
    assert "(tier 1: 12, tier 2: 6)" in page


def test_the_policy_page_shows_the_figures_escaped(client, project, cascade, lead):
    baby, _ = cascade
    JudgeRun.objects.filter(pk=baby.pk).update(model="<b>baby</b>")
    client.force_login(lead)
    page = client.get(reverse("judging:gating_policy", args=[project.slug])).content.decode()
    assert "12 of 40" in page and "6 of 40" in page
    assert "10 of 12" in page and "0.552" in page and "0.953" in page
    assert "too few to say" in page and "7 of 8" in page
    assert "0.054" in page and "0.12" in page
    assert "estimate" in page
    assert "&lt;b&gt;baby&lt;/b&gt;" in page and "<b>baby</b>" not in page
    assert "2 pending" in page
    assert GateDecision.objects.filter(tier=1).count() == 12
