"""The run page: calibration figures (checked against scikit-learn), live progress, cancel, resume, re-run errors."""

import numpy as np
import pytest
from django.urls import reverse
from sklearn.metrics import cohen_kappa_score, precision_score, recall_score

from annotations.models import Item, ProjectChange, Review
from annotations.statistics import cohen_kappa_bootstrap_ci, kappa_from_table
from judging.models import GateDecision, JudgeRun, Verdict
from judging.selectors import run_calibration
from judging.services import judge_run_cancel, judge_run_resume
from judging.tasks import judge_chunk
from tests.conftest import make_items, use_judge, use_run

SME = ["accept"] * 6 + ["reject"] * 4 + ["accept"] * 2
A, R = "accept", "reject"
JUDGE = [A, A, R, A, A, R, R, A, R, R, A, R]
MODELS = ["8b"] * 6 + ["70b"] * 6


@pytest.fixture
def calibrated(project):
    items = Item.objects.bulk_create(
        Item(project=project, external_id=f"i{i}", prompt="q", response=f"a{i}", source_model=m, task_type="faq")
        for i, m in enumerate(MODELS)
    )
    run = JudgeRun.objects.create(project=project, backend="openai", model="m", status="finished", items_total=12)
    for item, sme, judge in zip(items, SME, JUDGE, strict=True):
        Review.objects.create(item=item, decision=sme, origin="import")
        Verdict.objects.create(run=run, item=item, verdict=judge, rationale=f"because {judge}")
    return run


def test_calibration_matches_scikit_learn_on_the_same_labels(calibrated):
    got = run_calibration(calibrated)
    overall = got["overall"]
    assert overall["n"] == 12
    assert overall["cohen_kappa"] == pytest.approx(cohen_kappa_score(SME, JUDGE))
    assert overall["precision_accept"] == pytest.approx(precision_score(SME, JUDGE, pos_label="accept"))
    assert overall["recall_accept"] == pytest.approx(recall_score(SME, JUDGE, pos_label="accept"))
    low, high = overall["kappa_ci"]
    assert low <= overall["cohen_kappa"] <= high and -1 <= low < high <= 1
    by_model = got["by_source_model"]
    assert set(by_model) == {"8b", "70b"}
    assert by_model["8b"]["cohen_kappa"] == pytest.approx(cohen_kappa_score(SME[:6], JUDGE[:6]))
    assert got["by_task_type"]["faq"]["n"] == 12
    assert [d["external_id"] for d in got["disagreements"]] == [
        f"i{i}" for i, (s, j) in enumerate(zip(SME, JUDGE, strict=True)) if s != j
    ]


def test_the_bootstrap_uses_scikit_learns_kappa_formula():
    rng = np.random.default_rng(1)
    for _ in range(20):
        t, p = rng.integers(0, 2, 30), rng.integers(0, 2, 30)
        if len(set(t) | set(p)) > 1:
            table = [np.sum((t == a) & (p == b)) for a, b in ((1, 1), (1, 0), (0, 1), (0, 0))]
            assert kappa_from_table(np.array(table, dtype=float)) == pytest.approx(cohen_kappa_score(t, p))
    assert cohen_kappa_bootstrap_ci(["accept"] * 5, ["accept"] * 5) is None


def test_the_run_page_shows_calibration_and_a_live_progress_bar(client, sme, lead, outsider, project, calibrated):
    url = reverse("judging:run_detail", args=[project.slug, calibrated.pk])
    client.force_login(outsider)
    assert client.get(url).status_code == 404
    client.force_login(sme)
    assert client.get(url).status_code == 403
    client.force_login(lead)
    page = client.get(url).content.decode()
    assert "Cohen's κ" in page and "95 % CI" in page and "<svg" in page and "By source model" in page
    assert "i2" in page  # a disagreement to open
    JudgeRun.objects.filter(pk=calibrated.pk).update(status="running")
    partial = client.get(url, HTTP_HX_REQUEST="true").content.decode()
    assert partial.lstrip().startswith('<section id="run-progress"') and 'hx-trigger="every 1s"' in partial
    assert "12 judged, 0 errors of 12" in partial


@pytest.fixture
def llm_project(project, judge_server, settings):
    settings.LARRY_JUDGE_MAX_RETRIES = 0
    use_judge(project, judge_server.base_url)
    make_items(project, [f"answer {i}" for i in range(6)])
    return project


def test_errors_are_rerun_with_one_action(
    client, staff, llm_project, judge_server, start_run, django_capture_on_commit_callbacks
):
    judge_server.httpd.down = True
    run = start_run(llm_project)
    assert (run.status, run.items_done, run.items_error) == ("finished", 0, 6)
    assert set(GateDecision.objects.values_list("outcome", flat=True)) == {"pending"}
    judge_server.httpd.down = False
    client.force_login(staff)
    page = client.get(run.get_absolute_url()).content.decode()
    assert "Re-run the 6 errors" in page and "InternalServerError" in page and "the test server is down" in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("judging:run_control", args=[llm_project.slug, run.pk, "retry-errors"]))
    assert response.status_code == 302
    run.refresh_from_db()
    assert (run.status, run.items_done, run.items_error) == ("finished", 6, 0)
    assert Verdict.objects.filter(run=run).count() == 6
    with django_capture_on_commit_callbacks(execute=True):
        use_run(run)
    assert set(GateDecision.objects.values_list("outcome", flat=True)) == {"accept"}
    # A run in force is not resumed: its verdicts decide items; the page says so.
    page = client.post(
        reverse("judging:run_control", args=[llm_project.slug, run.pk, "retry-errors"]), follow=True
    ).content.decode()
    assert "is in the gating policy" in page


def test_a_cancelled_run_stops_and_resumes_without_judging_anything_twice(
    llm_project, judge_server, django_capture_on_commit_callbacks
):
    run = JudgeRun.objects.create(
        project=llm_project,
        backend="openai",
        model="test-judge",
        base_url=judge_server.base_url,
        status="running",
        items_total=6,
        config={"temperature": 0, "max_tokens": 64, "seed": 0},
    )
    ids = list(llm_project.items.order_by("id").values_list("id", flat=True))
    judge_chunk(run.pk, ids[:2])
    assert judge_run_cancel(run=run)
    judge_chunk(run.pk, ids[2:])  # a chunk that arrives after the cancel does nothing
    assert Verdict.objects.filter(run=run).count() == 2 and len(judge_server.requests) == 2
    with django_capture_on_commit_callbacks(execute=True):
        judge_run_resume(run=run)
    run.refresh_from_db()
    assert run.status == "finished" and Verdict.objects.filter(run=run).count() == 6
    assert len(judge_server.requests) == 6  # the first two were not judged again


def test_leads_not_smes_control_runs(client, sme, lead, project, calibrated):
    client.force_login(sme)
    assert client.post(reverse("judging:run_control", args=[project.slug, calibrated.pk, "cancel"])).status_code == 403
    client.force_login(lead)
    assert client.post(reverse("judging:run_control", args=[project.slug, calibrated.pk, "explode"])).status_code == 404
    assert client.post(reverse("judging:run_control", args=[project.slug, calibrated.pk, "cancel"])).status_code == 302
    change = ProjectChange.objects.get(project=project)
    assert (change.action, change.changed_by, change.detail) == (
        "run_control",
        lead,
        {"run": calibrated.pk, "what": "cancel"},
    )


def test_two_runs_are_compared_with_each_other_and_with_the_smes(client, lead, project, calibrated):
    small = JudgeRun.objects.create(project=project, backend="openai", model="8b", status="finished", items_total=12)
    small_verdicts = [A] * 12
    for item, verdict in zip(project.items.order_by("id"), small_verdicts, strict=True):
        Verdict.objects.create(run=small, item=item, verdict=verdict)
    client.force_login(lead)
    url = reverse("judging:runs_compare", args=[project.slug]) + f"?a={calibrated.pk}&b={small.pk}"
    page = client.get(url).content.decode()
    between = sum(j == A for j in JUDGE) / 12
    assert f"{between:.3f}" in page  # the 8B run agrees with the large one where the large one accepted
    assert f"{cohen_kappa_score(SME, JUDGE):.3f}" in page


@pytest.mark.parametrize(
    "query", ["", "?a=1", "?a=x&b=1", "?a=1&b=", "?a=1&b=99999999999999999999999", "?a=%00&b=1", "?a=1_0&b=1"]
)
def test_it_refuses_a_comparison_without_two_numeric_run_ids_with_400(client, lead, project, calibrated, query):
    client.force_login(lead)
    response = client.get(reverse("judging:runs_compare", args=[project.slug]) + query)
    assert response.status_code == 400
    assert "run id" in response.content.decode()


def test_a_comparison_with_an_unknown_run_is_not_found(client, lead, project, calibrated):
    client.force_login(lead)
    url = reverse("judging:runs_compare", args=[project.slug])
    assert client.get(url, {"a": calibrated.pk, "b": calibrated.pk + 1000}).status_code == 404


def test_a_run_costs_its_tokens_at_the_recorded_prices(project):
    run = JudgeRun(
        project=project,
        tokens_in=1_000_000,
        tokens_out=500_000,
        config={"price_in_per_million": "2.00", "price_out_per_million": "6.00"},
    )
    assert run.cost == 5
