"""The charts: their geometry (judging/charts.py: scales, empty and zero cases, intervals clipped to the axis, n
shown), and the pages that draw them (the funnel on the project page, agreement and cost across runs on the
gating-policy and compare pages, reliability diagrams with n per bin), labels escaped."""

import re
from decimal import Decimal
from html import unescape

import pytest
from django.urls import reverse
from django.utils import timezone

from annotations.models import Item, Review
from annotations.statistics import SMALL_N
from judging import charts
from judging.calibration import reliability_bins
from judging.models import JudgeRun, Verdict
from judging.selectors import funnel, run_agreement
from tests.judging.test_items_list import HOSTILE, build_story

# --- geometry -------------------------------------------------------------------------------------------------


def test_scale_maps_linearly_and_clips_to_the_extent():
    assert charts.scale(0.5, (0, 1), (10, 110)) == 60
    assert charts.scale(0.25, (-1, 1), (180, 20)) == 80  # a y axis: high values up
    assert charts.scale(-3, (-1, 1), (180, 20)) == 180
    assert charts.scale(7, (-1, 1), (180, 20)) == 20
    with pytest.raises(ValueError, match="empty domain"):
        charts.scale(0, (1, 1), (0, 10))


FIGURES = {
    "imported": 200,
    "sme_reviewed": 40,
    "by_sme": 40,
    "judged": 150,
    "vetoed_total": 1,
    "accepted": 120,
    "rejected": 50,
    "pending": 30,
    "undecided": 0,
}


def test_the_funnel_bars_are_shares_of_the_imported_items_each_with_its_filter():
    chart = charts.funnel_chart(FIGURES, "/projects/p/items/")
    rows = {row["key"]: row for row in chart["rows"]}
    assert list(rows) == ["imported", "sme_reviewed", "judged", "vetoed_total", "accepted", "rejected", "pending"]
    assert rows["imported"]["width"] == charts.FUNNEL_BAR_W and rows["imported"]["href"] == "/projects/p/items/"
    assert rows["accepted"]["width"] == pytest.approx(0.6 * charts.FUNNEL_BAR_W)
    assert rows["accepted"]["href"] == "/projects/p/items/?outcome=accept"
    assert rows["pending"]["href"] == "/projects/p/items/?outcome=pending"
    assert rows["vetoed_total"]["href"] == "/projects/p/items/?basis=rule"
    assert rows["sme_reviewed"]["href"] == "/projects/p/items/?basis=sme"
    assert rows["judged"]["href"] is None  # no filter gives exactly this count
    # 1 of 200 is 1.5 units: drawn at 2 so that it shows; its text says the true share.
    assert rows["vetoed_total"]["width"] == 2 and rows["vetoed_total"]["share_text"] == "0.5 %"
    assert rows["accepted"]["text"] == "accepted: 120 items, 60.0 % of the 200 imported"
    ys = [row["y"] for row in chart["rows"]]
    assert ys == sorted(ys) and len(set(ys)) == len(ys) and chart["height"] > ys[-1]


def test_the_funnel_links_sme_reviewed_only_when_the_gate_agrees_and_shows_ungated_items_when_there_are():
    chart = charts.funnel_chart({**FIGURES, "by_sme": 38, "undecided": 5}, "/i/")
    rows = {row["key"]: row for row in chart["rows"]}
    assert rows["sme_reviewed"]["href"] is None
    assert rows["undecided"]["href"] == "/i/?outcome=ungated" and rows["undecided"]["count"] == 5


def test_an_empty_funnel_has_no_bar_length_and_no_share():
    chart = charts.funnel_chart({"imported": 0}, "/i/")
    assert all(row["width"] == 0 and row["share"] is None for row in chart["rows"])
    assert chart["rows"][0]["text"] == "imported: 0 items"


def test_the_reliability_diagram_writes_each_bins_n_and_clips_nothing_outside_its_square():
    bins = reliability_bins([0.05, 0.15, 0.95, 0.97, 0.92], [False, True, True, True, False])
    diagram = charts.reliability_diagram(bins)
    assert [b["n"] for b in diagram["bars"]] == [1, 1, 3]  # empty bins are not drawn
    assert diagram["n"] == 5 and diagram["n_labels"]
    for bar in diagram["bars"]:
        assert diagram["top"] <= bar["whisker_high"] <= bar["whisker_low"] <= diagram["bottom"]
        assert 0 < bar["n_y"] < min(bar["whisker_high"], bar["y"])
    top = diagram["bars"][-1]
    assert top["height"] == pytest.approx(2 / 3 * diagram["side"], abs=0.1)
    thumbnail = charts.reliability_diagram(bins, side=120)
    assert not thumbnail["n_labels"]  # a thumbnail leaves n to the titles, and has fewer ticks
    assert [t["value"] for t in thumbnail["ticks"]] == [0, 0.5, 1]
    assert [t["value"] for t in diagram["ticks"]] == [0, 0.2, 0.4, 0.6, 0.8, 1]


def agreement(kappa, ci, n, accuracy=0.8, accuracy_ci=(0.7, 0.9)):
    return {"n": n, "cohen_kappa": kappa, "kappa_ci": ci, "accuracy": accuracy, "accuracy_ci": accuracy_ci}


def run_row(i, agreement, cost=None, tokens=0):
    return {"id": i, "label": f"m{i}", "href": f"/r/{i}/", "when": "today", "agreement": agreement,
            "cost": cost, "tokens": tokens, "sent": 10}  # fmt: skip


def test_runs_are_columns_in_order_with_kappa_its_interval_and_n_in_their_text():
    chart = charts.runs_chart(
        [
            run_row(1, agreement(0.5, (0.3, 0.7), 40), cost=Decimal("0.5")),
            run_row(2, agreement(-0.2, (-0.6, 0.1), 5), cost=Decimal("1.0")),
            run_row(3, agreement(None, None, 0, None, None), cost=Decimal(0)),
        ]
    )
    first, second, third = chart["marks"]
    assert first["x"] < second["x"] < third["x"]
    # The axis reaches below the lowest interval end (-0.6), to the ticks' step (0.5 on a long axis).
    assert [t["value"] for t in chart["ticks"]] == ["1", "0.5", "0", "-0.5", "-1"]
    assert charts.runs_chart([run_row(1, agreement(0.5, (-0.1, 0.7), 40))])["ticks"][-1]["value"] == "-0.25"
    assert first["whisker_high"] < first["dot_y"] < first["whisker_low"]  # y grows down
    assert "Cohen's κ 0.500 (95 % CI 0.300 to 0.700), n = 40 SME-labelled items" in first["text"]
    assert "agreement 0.800 (95 % CI 0.700 to 0.900)" in first["text"] and not first["small_n"]
    assert second["small_n"] and f"n=5: too few to mean anything (fewer than {SMALL_N})" in second["text"]
    assert third["dot_y"] is None and third["whisker_low"] is None and "κ undefined (n = 0" in third["text"]
    assert chart["cost_kind"] == "cost"
    assert second["bar_h"] == chart["cost_bottom"] - chart["cost_top"] and first["bar_h"] == second["bar_h"] / 2
    assert third["bar_h"] == 0


def test_a_runs_text_gives_its_precision_of_accepts_with_the_wilson_interval_and_n():
    from scipy.stats import binomtest

    confusion = {
        "sme_accept": {"judge_accept": 18, "judge_reject": 2},
        "sme_reject": {"judge_accept": 6, "judge_reject": 4},
    }
    chart = charts.runs_chart([run_row(1, {**agreement(0.3, (0.1, 0.5), 30), "confusion": confusion})])
    ci = binomtest(18, 24).proportion_ci(method="wilson")
    assert (
        f"precision of accepts 0.750 (95 % CI {ci.low:.3f} to {ci.high:.3f}, n = 24 judge accepts)"
        in (chart["marks"][0]["text"])
    )


def test_an_interval_beyond_the_axis_is_clipped_to_it():
    chart = charts.runs_chart([run_row(1, agreement(0.2, (-0.4, 0.9), 30))], kappa_domain=(0.0, 1.0))
    mark = chart["marks"][0]
    assert mark["whisker_low"] == chart["kappa_bottom"] and mark["whisker_high"] > chart["kappa_top"]
    assert "95 % CI -0.400 to 0.900" in mark["text"]  # the text keeps the true interval


def test_without_prices_the_bars_are_tokens_and_no_runs_is_an_empty_chart():
    chart = charts.runs_chart([run_row(1, agreement(0.1, None, 3), tokens=900), run_row(2, agreement(0.1, None, 3))])
    assert chart["cost_kind"] == "tokens"
    assert chart["marks"][0]["cost_label"] == "900" and chart["marks"][1]["bar_h"] == 0
    assert "no interval" in chart["marks"][0]["text"] and "900 tokens (no prices)" in chart["marks"][0]["text"]
    empty = charts.runs_chart([])
    assert empty["marks"] == [] and empty["total"] == 0


def test_only_the_newest_runs_are_drawn():
    chart = charts.runs_chart([run_row(i, agreement(0.5, (0.4, 0.6), 30)) for i in range(charts.RUNS_MAX + 5)])
    assert chart["shown"] == charts.RUNS_MAX and chart["total"] == charts.RUNS_MAX + 5
    assert chart["marks"][0]["id"] == 5


def test_a_run_without_prices_has_an_unknown_cost_and_the_local_classifier_costs_nothing(project):
    priced = JudgeRun(project=project, backend="openai", tokens_in=10**6, config={"price_in_per_million": "2"})
    unpriced = JudgeRun(project=project, backend="openai", tokens_in=10**6, config={})
    local = JudgeRun(project=project, backend="local")
    assert charts.run_cost(priced) == 2 and charts.run_cost(unpriced) is None and charts.run_cost(local) == 0


# --- pages ----------------------------------------------------------------------------------------------------


def funnel_svg(html: str) -> str:
    return re.search(r'<svg class="funnel-chart".*?</svg>', html, re.S).group(0)


def test_the_project_page_draws_the_funnel_with_its_counts_and_links(client, project, sme, lead):
    build_story(project, sme)
    figures = funnel(project)
    client.force_login(lead)
    html = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    svg = funnel_svg(html)
    items = reverse("judging:items", args=[project.slug])
    assert f'href="{items}?outcome=accept" aria-label="accepted: {figures["accepted"]} items' in svg
    assert f'href="{items}?outcome=reject"' in svg and f'href="{items}?basis=rule"' in svg
    assert f'data-stage="pending" data-count="{figures["pending"]}"' in svg
    assert f'data-stage="imported" data-count="{figures["imported"]}"' in svg
    assert f">{figures['accepted']} · " in svg
    assert '<ol class="funnel">' in html  # the numbers stay


def test_the_gating_policy_page_draws_each_finished_run_with_kappa_and_n(client, project, sme, lead):
    story = build_story(project, sme)
    hostile = JudgeRun.objects.create(
        project=project, backend="openai", model=HOSTILE, status="finished", finished_at=timezone.now(),
        config={"price_in_per_million": "3"}, tokens_in=2000,
    )  # fmt: skip
    for item in project.items.all():
        Verdict.objects.create(run=hostile, item=item, verdict="accept")
    client.force_login(lead)
    html = client.get(reverse("judging:gating_policy", args=[project.slug])).content.decode()
    svg = re.search(r'<svg class="runs-chart".*?</svg>', html, re.S).group(0)
    marks = re.findall(r'<a class="run-mark[^"]*" href="([^"]+)" aria-label="([^"]+)" data-run="(\d+)"', svg)
    assert [int(run) for _href, _text, run in marks] == [story["run"].pk, hostile.pk]  # in the order they finished
    for href, text, run_id in marks:
        run = JudgeRun.objects.get(pk=run_id)
        got = run_agreement(run, interval=True)
        assert href == run.get_absolute_url()
        assert f"n = {got['n']} SME-labelled items" in unescape(text)
        assert "too few to mean anything" in unescape(text)  # 2 SME labels
    assert "<script>alert" not in html and "&lt;script&gt;alert(&quot;x&quot;)" in html
    assert "cost 0.0060 (at the endpoint&#x27;s prices)" in svg


def test_the_compare_page_highlights_the_two_runs(client, project, sme, lead):
    story = build_story(project, sme)
    other = JudgeRun.objects.create(project=project, backend="local", model="tfidf", status="finished")
    client.force_login(lead)
    url = reverse("judging:runs_compare", args=[project.slug])
    html = client.get(url, {"a": story["run"].pk, "b": other.pk}).content.decode()
    assert html.count('class="run-mark highlight') == 2


@pytest.fixture
def confident_run(project):
    items = Item.objects.bulk_create(
        Item(project=project, external_id=f"c{i}", prompt="q", response=f"a{i}") for i in range(30)
    )
    run = JudgeRun.objects.create(project=project, backend="openai", model="m", status="finished")
    for i, item in enumerate(items):
        accept = i % 3 != 0
        Review.objects.create(item=item, decision="accept" if accept else "reject", origin="import")
        p = 0.85 if accept else 0.25
        Verdict.objects.create(run=run, item=item, verdict="accept" if p > 0.5 else "reject", confidence=p)
    return run


def test_the_run_page_writes_each_bins_n_on_its_reliability_diagram(client, lead, confident_run):
    client.force_login(lead)
    html = client.get(confident_run.get_absolute_url()).content.decode()
    svg = re.search(r'<svg class="reliability".*?</svg>', html, re.S).group(0)
    assert re.findall(r'class="bin-n"[^>]*>n=(\d+)<', svg) == ["10", "20"]
    assert "n = 30 SME-labelled items" in svg


def test_the_gating_policy_page_shows_a_small_reliability_diagram_of_the_run_in_force(client, lead, confident_run):
    from judging.services import gating_policy_set

    gating_policy_set(project=confident_run.project, tiers=[(confident_run, None)])
    client.force_login(lead)
    html = client.get(reverse("judging:gating_policy", args=[confident_run.project.slug])).content.decode()
    figure = re.search(r'<figure class="chart policy-calibration">.*?</figure>', html, re.S).group(0)
    assert f'href="{confident_run.get_absolute_url()}#confidence"' in figure and "n = 30" in figure
