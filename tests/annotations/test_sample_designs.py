"""Recorded sampling designs: every drawn item keeps its inclusion probability; CLI, REST API and project page."""

from collections import Counter

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotations.models import Item, Project, SampleDraw, SampleMembership, Slot
from annotations.queue import in_sme_queue, queue_add
from annotations.sampling import SamplingError, _systematic, pps_inclusion, sample_draw
from annotations.services import sample_for_review
from judging.models import GateDecision, JudgeRun, Verdict
from tests.conftest import make_items, use_run


def members(draw) -> dict[int, SampleMembership]:
    return {m.item_id: m for m in draw.members.all()}


def test_a_uniform_draw_records_n_over_N_and_queues_the_items(project, lead):
    make_items(project, [f"answer {i}" for i in range(40)])
    draw = sample_draw(project=project, size=10, design="uniform", seed=3, user=lead)
    got = members(draw)
    assert (draw.drawn, draw.population, draw.created_by) == (10, 40, lead)
    assert {m.inclusion_probability for m in got.values()} == {0.25}
    assert all(m.uniform_slice for m in got.values())
    assert set(project.items.filter(in_sme_queue()).values_list("id", flat=True)) == set(got)
    # The next draw comes from the 30 items left, with its own probability.
    second = sample_draw(project=project, size=10, design="uniform", seed=3)
    assert second.population == 30 and not set(members(second)) & set(got)
    assert sorted({m.inclusion_probability for m in members(second).values()}) == pytest.approx([1 / 3])


def test_the_same_seed_draws_the_same_items_and_the_old_sampler_is_recorded_too(project):
    make_items(project, [f"answer {i}" for i in range(50)])
    first = set(members(sample_draw(project=project, size=7, design="uniform", seed=11)))
    forget_draws(project)
    again = set(members(sample_draw(project=project, size=7, design="uniform", seed=11)))
    assert first == again
    forget_draws(project)
    assert sample_for_review(project=project, n=7, seed=11) == 7
    assert set(members(SampleDraw.objects.first())) == first


def forget_draws(project) -> None:
    Slot.objects.filter(project=project).delete()
    SampleDraw.objects.filter(project=project).delete()


def test_items_queued_for_other_reasons_stay_drawable_and_no_item_is_drawn_twice(project):
    """The frame is every item no earlier draw chose: successive uniform draws are one simple random sample,
    even when the gate queued items for the SMEs in between (a certificate's held-back accepts, say)."""
    make_items(project, [f"answer {i}" for i in range(40)])
    first = set(members(sample_draw(project=project, size=10, design="uniform", seed=1)))
    held_back = list(project.items.exclude(pk__in=first).values_list("pk", flat=True)[:20])
    queue_add(project=project, item_ids=held_back)
    second = sample_draw(project=project, size=30, design="uniform", seed=2)
    assert second.population == 30 and second.drawn == 30
    chosen = set(members(second))
    assert not chosen & first and set(held_back) <= chosen
    assert {m.inclusion_probability for m in second.members.all()} == {1.0}
    with pytest.raises(SamplingError, match="size"):
        sample_draw(project=project, size=0, design="uniform", seed=3)
    assert sample_draw(project=project, size=5, design="uniform", seed=3).drawn == 0  # every item drawn once


def stratified_items(project, sizes: dict[str, int]) -> None:
    Item.objects.bulk_create(
        Item(project=project, external_id=f"{task}-{i}", prompt="q", response="r", task_type=task)
        for task, n in sizes.items()
        for i in range(n)
    )


@pytest.mark.parametrize(
    "design, options",
    [
        ("uniform", {}),
        ("stratified", {"strata": "task_type"}),
        ("confidence", {"uniform_share": 0.5}),
    ],
)
def test_prompts_without_a_response_are_in_no_draws_frame_nor_in_the_queue(project, design, options):
    for i in range(6):
        Item.objects.create(project=project, external_id=f"r{i}", prompt=f"Q{i}?", response=f"A{i}.", task_type="t")
        Item.objects.create(project=project, external_id=f"p{i}", prompt=f"P{i}?", response="", task_type="t")
    draw = sample_draw(project=project, size=12, design=design, seed=0, **options)
    assert (draw.population, draw.drawn) == (6, 6)
    assert not project.items.filter(in_sme_queue(), response="").exists()
    assert not Item.objects.filter(response="", slots__isnull=False).exists()
    assert all(m.item.response for m in draw.members.select_related("item"))


def test_queueing_a_prompt_without_a_response_queues_nothing(project):

    prompt_only = Item.objects.create(project=project, external_id="p", prompt="P?", response="")
    answered = Item.objects.create(project=project, external_id="r", prompt="Q?", response="A.")
    assert queue_add(project=project, item_ids=[prompt_only.pk, answered.pk]) == 1
    assert list(project.items.filter(in_sme_queue())) == [answered]
    # sample_for_review's fraction is of the items with a response.
    forget_draws(project)
    assert sample_for_review(project=project, fraction=1.0, seed=0) == 1


def test_proportional_allocation_gives_each_stratum_its_share(project):
    stratified_items(project, {"billing": 60, "refunds": 40})
    draw = sample_draw(project=project, size=10, design="stratified", strata="task_type", seed=1)
    by_stratum = Counter(m.stratum for m in members(draw).values())
    assert by_stratum == {"billing": 6, "refunds": 4}
    assert sorted({m.inclusion_probability for m in members(draw).values()}) == pytest.approx([0.1])


def test_equal_allocation_gives_a_small_stratum_all_it_has_and_the_rest_to_the_others(project):
    stratified_items(project, {"billing": 95, "refunds": 3})
    draw = sample_draw(project=project, size=10, design="stratified", strata="task_type", allocation="equal", seed=1)
    got = members(draw).values()
    assert Counter(m.stratum for m in got) == {"billing": 7, "refunds": 3}
    p = {m.stratum: m.inclusion_probability for m in got}
    assert p == pytest.approx({"billing": 7 / 95, "refunds": 1.0})


def test_pps_probabilities_sum_to_n_and_systematic_sampling_hits_them():
    weights = np.array([0.55, 0.05, 0.3, 0.05, 0.45, 0.1, 0.05, 0.5])
    pi = pps_inclusion(weights, 3)
    assert pi.sum() == pytest.approx(3) and pi.max() <= 1
    rng = np.random.default_rng(0)
    hits = np.zeros(len(weights))
    reps = 4000
    for _ in range(reps):
        drawn = _systematic(pi, rng)
        assert len(drawn) == 3
        hits[drawn] += 1
    assert np.abs(hits / reps - pi).max() < 0.03  # 4000 draws: the standard error is at most 0.008


def test_a_weight_above_its_share_is_taken_for_certain():
    pi = pps_inclusion(np.array([10.0, 1.0, 1.0, 1.0]), 2)
    assert pi[0] == 1 and pi[1:] == pytest.approx([1 / 3] * 3)


def test_a_confidence_weighted_draw_favours_the_items_the_policy_is_least_sure_of(project, lead):
    items = make_items(project, [f"answer {i}" for i in range(100)])
    # The first 20 items are coin flips for the judge (p = 0.5), the other 80 near certain.
    run = JudgeRun.objects.create(
        project=project, backend="openai", model="j", base_url="http://j/v1", status="finished"
    )
    Verdict.objects.bulk_create(
        Verdict(run=run, item=item, verdict="accept", confidence_calibrated=0.5 if i < 20 else 0.99)
        for i, item in enumerate(items)
    )
    use_run(run, user=lead)  # by the verdict alone, so no item is pending (pending items go to the SMEs by themselves)
    assert not project.items.filter(in_sme_queue()).exists()
    draw = sample_draw(project=project, size=20, design="confidence", seed=5, uniform_share=0.25, user=lead)
    got = members(draw)
    assert draw.drawn == 20 and sum(m.uniform_slice for m in got.values()) == 5
    unsure = {item.pk for item in items[:20]}
    weighted = [i for i, m in got.items() if not m.uniform_slice]
    assert sum(i in unsure for i in weighted) >= 10  # 20 unsure items carry ~0.55/(0.55 + 0.8*0.06) of the weight
    p_unsure = {m.inclusion_probability for i, m in got.items() if i in unsure}
    p_sure = {m.inclusion_probability for i, m in got.items() if i not in unsure}
    assert min(p_unsure) > max(p_sure) > 0.05  # every item keeps at least the uniform slice's 5/100


def test_an_audit_draws_only_from_the_accepted_set(project):
    items = make_items(project, [f"answer {i}" for i in range(30)])
    GateDecision.objects.bulk_create(
        GateDecision(item=item, outcome="accept" if i % 3 == 0 else "reject", basis="judge")
        for i, item in enumerate(items)
    )
    draw = sample_draw(project=project, size=50, design="audit", seed=2)
    accepted = {item.pk for i, item in enumerate(items) if i % 3 == 0}
    assert draw.population == 10 and set(members(draw)) == accepted
    assert {m.inclusion_probability for m in members(draw).values()} == {1.0}
    # Uniform over the accepted set, not over the items: its labels are no uniform slice for the certificate.
    assert not any(m.uniform_slice for m in members(draw).values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0, "design": "uniform"}, "size must be"),
        ({"size": 5, "design": "lottery"}, "design must be one of"),
        ({"size": 5, "design": "stratified"}, "needs strata"),
        ({"size": 5, "design": "stratified", "strata": "prompt"}, "needs strata"),
        ({"size": 5, "design": "uniform", "strata": "task_type"}, "stratified design only"),
        ({"size": 5, "design": "confidence", "uniform_share": 0}, "uniform_share"),
    ],
)
def test_bad_draws_are_refused_with_what_is_wrong(project, kwargs, message):
    with pytest.raises(SamplingError, match=message):
        sample_draw(project=project, seed=0, **kwargs)
    assert not SampleDraw.objects.exists()


def test_the_command_draws_by_a_design(project, capsys):
    stratified_items(project, {"billing": 30, "refunds": 10})
    call_command("sample_items", "support", "--n", "8", "--design", "stratified", "--strata", "task_type")
    assert "8 of 40 items added" in capsys.readouterr().out
    assert SampleDraw.objects.get().strata == "task_type"
    with pytest.raises(CommandError, match="needs strata"):
        call_command("sample_items", "support", "--n", "8", "--design", "stratified")


def auth(user) -> dict:
    token, _ = Token.objects.get_or_create(user=user)
    return {"HTTP_AUTHORIZATION": f"Token {token.key}"}


def test_the_api_draws_for_leads_and_says_what_is_wrong(client, project, lead, sme, outsider):
    make_items(project, [f"answer {i}" for i in range(20)])
    url = "/api/projects/support/samples/"
    body = {"size": 5, "design": "uniform", "seed": 4}
    assert client.post(url, body, content_type="application/json", **auth(outsider)).status_code == 404
    assert client.post(url, body, content_type="application/json", **auth(sme)).status_code == 403
    response = client.post(url, body, content_type="application/json", **auth(lead))
    assert response.status_code == 201 and response.json()["drawn"] == 5
    bad = client.post(url, {"size": 5, "design": "stratified"}, content_type="application/json", **auth(lead))
    assert bad.status_code == 400 and "needs strata" in bad.json()["detail"]
    bad = client.post(url, {"size": 0, "design": "uniform"}, content_type="application/json", **auth(lead))
    assert bad.status_code == 400 and "size" in bad.json()
    listed = client.get(url, **auth(lead)).json()
    assert [d["design"] for d in listed] == ["uniform"] and listed[0]["created_by"] == "lead"

    # The drawn items with their inclusion probabilities: n/N = 5/20 each, for leads only.
    members_url = f"{url}{response.json()['id']}/members/"
    assert client.get(members_url, **auth(outsider)).status_code == 404
    assert client.get(members_url, **auth(sme)).status_code == 403
    rows = client.get(members_url, **auth(lead)).json()["results"]
    assert len(rows) == 5 and {r["inclusion_probability"] for r in rows} == {0.25}
    assert {r["item"] for r in rows} == set(SampleMembership.objects.values_list("item_id", flat=True))
    assert all(r["uniform_slice"] and r["external_id"].startswith("r") for r in rows)
    other = Project.objects.create(slug="other", name="Other")
    make_items(other, ["x"])
    foreign = sample_draw(project=other, size=1, design="uniform", seed=0)
    assert client.get(f"{url}{foreign.pk}/members/", **auth(lead)).status_code == 404


def test_a_lead_draws_from_the_project_page(client, project, lead, sme):
    make_items(project, [f"answer {i}" for i in range(20)])
    page = reverse("judging:project_detail", args=["support"])
    client.force_login(lead)
    assert "Draw for the SMEs" in client.get(page).content.decode()
    post = reverse("annotations:sample_draw", args=["support"])
    form = {"size": 6, "design": "uniform", "seed": 1, "strata": "", "allocation": "proportional", "uniform_share": 0.2}
    response = client.post(post, form, follow=True)
    assert "6 of 20 items added to the SME queue" in response.content.decode()
    response = client.post(post, {**form, "design": "stratified"}, follow=True)
    assert "No items drawn: a stratified draw needs strata" in response.content.decode()
    client.force_login(sme)
    assert client.post(post, form).status_code == 403
    assert SampleDraw.objects.count() == 1
