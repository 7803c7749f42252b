"""Pages for the judging side: the project's funnel, judge runs, rules."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from annotations.views import get_project_for_user
from judging.models import JudgeRun
from judging.selectors import funnel, label_function_stats, latest_finished_run, run_agreement
from judging.services import judge_run_create, project_regate


@login_required
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """The funnel (imported -> SME reviewed -> judged -> vetoed -> accepted), runs and rules."""
    project = get_project_for_user(request, slug)
    runs = list(JudgeRun.objects.filter(project=project)[:10])
    for run in runs:
        run.agreement = run_agreement(run) if run.status == JudgeRun.Status.FINISHED else None
    context = {
        "project": project,
        "funnel": funnel(project),
        "runs": runs,
        "gating_run": latest_finished_run(project),
        "rules": project.label_functions.annotate(n_hits=Count("hits")),
    }
    return render(request, "judging/project_detail.html", context)


@login_required
def rules(request: HttpRequest, slug: str) -> HttpResponse:
    """Label-function analytics: coverage, overlap, conflict, empirical accuracy, as a table and a chart."""
    project = get_project_for_user(request, slug)
    stats = label_function_stats(project)
    bar = 240  # px for 100 %
    for row in stats:
        row["bars"] = [
            ("coverage", row["coverage"], round(row["coverage"] * bar)),
            ("conflict", row["conflict"], round(row["conflict"] * bar)),
            ("accuracy", row["empirical_accuracy"], round((row["empirical_accuracy"] or 0) * bar)),
        ]
    context = {"project": project, "stats": stats, "bar": bar, "chart_height": 24 + 54 * len(stats)}
    return render(request, "judging/rules.html", context)


@login_required
@require_POST
def regate(request: HttpRequest, slug: str) -> HttpResponse:
    """Run the active label functions and re-gate every item (staff only), e.g. after new SME reviews."""
    project = get_project_for_user(request, slug)
    if not request.user.is_staff:
        raise PermissionDenied("Only staff re-gate projects.")
    hits, counts = project_regate(project=project)
    messages.info(
        request,
        f"{hits} rule hits; {counts['accept']} accepted, {counts['reject']} rejected, {counts['pending']} pending.",
    )
    return redirect(project)


@login_required
@require_POST
def judge_run_start(request: HttpRequest, slug: str) -> HttpResponse:
    """Start a judge run over the project (staff only)."""
    project = get_project_for_user(request, slug)
    if not request.user.is_staff:
        raise PermissionDenied("Only staff start judge runs.")
    run = judge_run_create(project=project, user=request.user)
    messages.info(request, f"Judge run {run.pk} started ({run.judge_label}).")
    return redirect(project)
