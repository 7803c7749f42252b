"""Pages for the judging side: the project's funnel, judge runs, rules."""

from datetime import datetime

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from annotations.models import ProjectChange
from annotations.project_settings import project_change_record
from annotations.sampling import draws_for
from annotations.selectors import ground_truth
from annotations.views import SampleDrawForm, form_problems, get_project_for_lead, parse_id
from judging import charts
from judging.backends import JudgeUnreachable
from judging.estimate import accepted_set_precision
from judging.models import GatingPolicyChange, JudgeEndpoint, JudgeRun, RegateRequest
from judging.selectors import (
    MIN_AGREEMENT_PAIRS,
    certificate_held_back,
    certification_current,
    certification_staleness,
    funnel,
    gating_policy,
    gating_policy_candidates,
    label_function_stats,
    policy_report,
    run_agreement,
    run_answered_by,
    run_calibration,
    run_confidence_report,
    run_errors,
    run_progress,
    runs_across_time,
    runs_compare,
)
from judging.services import (
    CertificationError,
    LearnFromError,
    RunBusy,
    certification_set,
    escalated_item_ids,
    escalation_run_create,
    gating_policy_compute,
    gating_policy_set,
    judge_endpoint_check,
    judge_run_cancel,
    judge_run_create,
    judge_run_queue_errors,
    judge_run_recalibrate,
    judge_run_resume,
    judge_run_revive_if_stalled,
    regate_request,
)


@login_required
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    """The funnel (imported -> SME reviewed -> judged -> vetoed -> accepted), runs and rules."""
    project = get_project_for_lead(request, slug)
    runs = list(JudgeRun.objects.filter(project=project)[:10])
    truth = ground_truth(project=project)
    for run in runs:
        run.agreement = run_agreement(run, truth) if run.status == JudgeRun.Status.FINISHED else None
    figures, policy = funnel(project), gating_policy(project)
    in_policy = {tier.run_id for tier in policy.tiers.all()} if policy else set()
    for run in runs:
        run.in_policy = run.pk in in_policy
    certification = certification_current(project)
    draws = draws_for(project)[:10]
    context = {
        "project": project,
        "funnel": figures,
        "funnel_chart": charts.funnel_chart(figures, reverse("judging:items", args=[project.slug])),
        "policy": policy,
        "regating": RegateRequest.objects.filter(project=project).first(),
        "runs": runs,
        "teachers": JudgeRun.objects.filter(
            project=project, status=JudgeRun.Status.FINISHED, backend=JudgeRun.Backend.OPENAI
        ),
        "rules": project.label_functions.annotate(n_hits=Count("hits")),
        "sample_form": SampleDrawForm(),
        "draws": draws,
        "draws_running": any(draw.status in ("queued", "running") for draw in draws),
        "estimate": accepted_set_precision(project),
        "certification": certification,
        "certification_since": certification_staleness(certification) if certification else None,
        "held_back": certificate_held_back(certification) if certification else None,
        "certify_form": CertifyForm(),
    }
    return render(request, "judging/project_detail.html", context)


class CertifyForm(forms.Form):
    """A lead's target for the accepted set: precision at least ``target`` with confidence 1 - ``delta``."""

    target = forms.FloatField(min_value=0.5, max_value=0.999, initial=0.9, label="Precision at least")
    delta = forms.FloatField(min_value=0.001, max_value=0.5, initial=0.05, label="δ (confidence 1 - δ)")


@login_required
@require_POST
def certify(request: HttpRequest, slug: str) -> HttpResponse:
    """Certify the accepted set for a lead's target (``services.certification_set``); back to the project page."""
    project = get_project_for_lead(request, slug)
    form = CertifyForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Not certified: {form_problems(form)}")
        return redirect(project)
    try:
        made = certification_set(project=project, user=request.user, **form.cleaned_data)
    except CertificationError as exc:
        messages.error(request, f"Not certified: {exc}")
        return redirect(project)
    applying = " The gate applies it in the background: until then it is not applied, and exports are refused."
    if made.threshold is None:
        messages.info(request, f"Nothing certified: {made.result['reason']}{applying}")
    else:
        messages.success(
            request, f"Certified {made.certified} accepted items at P(accept) ≥ {made.threshold:g}.{applying}"
        )
    return redirect(project)


@login_required
def rules(request: HttpRequest, slug: str) -> HttpResponse:
    """Label-function analytics: coverage, overlap, conflict, empirical accuracy, as a table and a chart."""
    project = get_project_for_lead(request, slug)
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
    """Queue a run of the active label functions and a re-gating of every item (leads and staff), e.g. after
    new SME reviews; logged as a ``ProjectChange``; the project page shows when it ended and whether it failed."""
    project = get_project_for_lead(request, slug)
    generation = regate_request(project.pk)
    project_change_record(project=project, user=request.user, action=ProjectChange.Action.REGATE, request=generation)
    messages.info(request, f"Re-gating queued (request {generation}): rules, then the gate, in the background.")
    return redirect(project)


@login_required
def gating_policy_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The gating policy in force, every finished run as a candidate with its agreement with the SMEs, the log
    of changes. A lead acts here by POST ``action``: ``use`` (``run``: that run alone decides, by its verdicts),
    ``cascade`` (``tier`` run ids in order, ``target``, ``risk``: thresholds chosen from the SME labels) or
    ``escalate`` (``endpoint``: a run of that judge over the items the policy in force leaves undecided)."""
    project = get_project_for_lead(request, slug)
    if request.method == "POST":
        try:
            message = _gating_policy_act(request, project)
        except (ValueError, JudgeUnreachable) as exc:  # PolicyError, parse errors, a judge that does not answer
            messages.error(request, str(exc))
        else:
            messages.info(request, message)
        return redirect("judging:gating_policy", project.slug)
    policy = gating_policy(project)
    candidates = gating_policy_candidates(project)
    current = [c for c in candidates if c["in_policy"]]
    for c in current:
        summary = c["confidence"]["calibrated"] or c["confidence"]["raw"]
        c["diagram"] = charts.reliability_diagram(summary["bins"], side=120) if summary else None
        c["diagram_kind"] = "calibrated" if c["confidence"]["calibrated"] else "raw"
    context = {
        "project": project,
        "policy": policy,
        "report": policy_report(project),
        "min_pairs": MIN_AGREEMENT_PAIRS,
        "candidates": candidates,
        "current": current,
        "runs_chart": _runs_chart(project, runs_across_time(project, candidates=candidates)),
        "changes": GatingPolicyChange.objects.filter(project=project).select_related("changed_by")[:50],
        "endpoints": JudgeEndpoint.objects.filter(project=project).order_by("name"),
        "escalated": len(escalated_item_ids(project)) if policy is not None and policy.tiers.all() else None,
    }
    return render(request, "judging/gating_policy.html", context)


def _gating_policy_act(request: HttpRequest, project) -> str:
    """Carry out the policy page's POST; returns what to tell the lead. Raises ValueError (or PolicyError)
    with a message naming the field at fault."""
    action = request.POST.get("action") or "use"
    runs = JudgeRun.objects.filter(project=project)
    if action == "use":
        run = get_object_or_404(runs, pk=parse_id(request.POST.get("run"), "run"))
        gating_policy_set(project=project, tiers=[(run, None)], user=request.user)
        return f"Run {run.pk} now gates the project; re-gating queued."
    if action == "cascade":
        ids = [parse_id(raw, "tier's run") for raw in request.POST.getlist("tier") if raw]
        if not ids:
            raise ValueError("Choose at least the first tier's run.")
        found = runs.in_bulk(ids)
        missing = [str(i) for i in ids if i not in found]
        if missing:
            raise ValueError(f"No run {', '.join(missing)} in this project.")
        target = _fraction(request.POST.get("target"), "target agreement")
        risk = _fraction(request.POST.get("risk"), "risk")
        policy = gating_policy_compute(
            project=project, runs=[found[i] for i in ids], target=target, risk=risk, user=request.user
        )
        return "Cascade set: " + policy.label + ". Re-gating queued."
    if action == "escalate":
        endpoint = get_object_or_404(
            JudgeEndpoint.objects.filter(project=project), pk=parse_id(request.POST.get("endpoint"), "endpoint")
        )
        judge_endpoint_check(project=project, endpoint=endpoint)  # raises JudgeUnreachable
        run = escalation_run_create(project=project, endpoint=endpoint, user=request.user)
        return f"Run {run.pk} ({run.judge_label}) started over the {run.items_total} items the policy escalates."
    raise ValueError(f"Unknown action {action[:40]!r}: use, cascade or escalate.")


def _fraction(raw: str | None, what: str) -> float:
    """A number between 0 and 1 that a form sent, or ValueError naming ``what``."""
    try:
        value = float(raw or "")
    except ValueError:
        raise ValueError(f"The {what} {str(raw)[:40]!r} is not a number.") from None
    if not 0 < value < 1:
        raise ValueError(f"The {what} must be between 0 and 1, not {value:g}.")
    return value


def _get_run(request: HttpRequest, slug: str, run_id: int) -> JudgeRun:
    project = get_project_for_lead(request, slug)
    return get_object_or_404(JudgeRun.objects.select_related("project"), pk=run_id, project=project)


@login_required
def run_detail(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    """A run: which judge, live progress, errors, and its calibration against SME ground truth."""
    run = _get_run(request, slug, run_id)
    # The page polls while a run is running: a run whose workers died is noticed here and queued again.
    judge_run_revive_if_stalled(run_id=run.pk)
    context = {
        "project": run.project,
        "run": run,
        "progress": run_progress(run),
        "run_errors": run_errors(run),
        "lease_s": settings.LARRY_JUDGE_LEASE_S,
    }
    if request.htmx:
        return render(request, "judging/run_detail.html#progress", context)
    calibration = run_calibration(run)
    matrix = calibration["overall"]["confusion"]
    if matrix:
        biggest = max(max(row.values()) for row in matrix.values()) or 1
        calibration["cells"] = [
            (sme, judge, n, round(0.12 + 0.5 * n / biggest, 2))
            for sme, row in matrix.items()
            for judge, n in row.items()
        ]
    errors = run.verdicts.filter(verdict="").select_related("item").order_by("item_id")[:50]
    # The prompt and the examples get their own sections; the rest of the snapshot is a table.
    snapshot = {k: v for k, v in sorted(run.config.items()) if k not in ("system_prompt", "few_shot_examples")}
    examples = run.config.get("few_shot_examples") or []
    names = dict(run.project.items.filter(pk__in=[e["item_id"] for e in examples]).values_list("id", "external_id"))
    few_shot = [{**e, "external_id": names.get(e["item_id"], f"deleted item {e['item_id']}")} for e in examples]
    answered_by = run_answered_by(run)
    confidence = run_confidence_report(run)
    for key in ("raw", "calibrated"):
        if confidence[key]:
            confidence[key]["diagram"] = charts.reliability_diagram(confidence[key]["bins"])
    confidence["kinds"] = [("raw", confidence["raw"]), ("calibrated", confidence["calibrated"])]
    fitted_at = confidence["fit"].get("fitted_at")
    confidence["fitted_at"] = datetime.fromisoformat(fitted_at) if fitted_at else None
    policy = gating_policy(run.project)
    context.update(
        in_policy=policy is not None and any(tier.run_id == run.pk for tier in policy.tiers.all()),
        confidence=confidence,
        calibration=calibration,
        errors=errors,
        snapshot=snapshot,
        few_shot=few_shot,
        answered_by=answered_by,
        answered_by_other=any(other for _name, _n, other in answered_by),
    )
    return render(request, "judging/run_detail.html", context)


@login_required
@require_POST
def run_recalibrate(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    """Refit the run's recalibration map on the SME labels there are now (leads and staff).

    A person's action: new SME labels change calibrated confidences, and so
    what a policy reading them decides, only when someone asks for it here.
    """
    run = _get_run(request, slug, run_id)
    if run.status in (JudgeRun.Status.QUEUED, JudgeRun.Status.RUNNING):
        messages.error(request, f"Run {run.pk} is still {run.status}: it is calibrated when it finishes.")
        return redirect(run)
    summary = judge_run_recalibrate(run=run, user=request.user)
    if summary["status"] == "calibrated":
        messages.info(
            request,
            f"Recalibrated on {summary['n_labels']} SME labels ({summary['n_accept']} accepts, "
            f"{summary['n_reject']} rejects): {summary['method']} map, {summary['folds']} folds, "
            f"{summary['n_calibrated']} verdicts calibrated.",
        )
    else:
        messages.error(request, f"Nothing calibrated: {summary['reason']}.")
    return redirect(run)


@login_required
def runs_compare_page(request: HttpRequest, slug: str) -> HttpResponse:
    """Compare two runs of the project (``?a=<run id>&b=<run id>``)."""
    project = get_project_for_lead(request, slug)
    runs = JudgeRun.objects.filter(project=project)
    try:
        first_id, second_id = parse_id(request.GET.get("a"), "first run"), parse_id(request.GET.get("b"), "second run")
    except ValueError as exc:
        return HttpResponseBadRequest(f"{exc} Compare two runs with ?a=<run id>&b=<run id>.", content_type="text/plain")
    first = get_object_or_404(runs, pk=first_id)
    second = get_object_or_404(runs, pk=second_id)
    context = {
        "project": project,
        "first": first,
        "second": second,
        "comparison": runs_compare(first, second),
        "runs_chart": _runs_chart(project, runs_across_time(project), highlight={first.pk, second.pk}),
    }
    return render(request, "judging/runs_compare.html", context)


def _runs_chart(project, rows: list[dict], highlight: set[int] = frozenset()) -> dict:
    """``charts.runs_chart`` of ``selectors.runs_across_time``'s rows; the runs in ``highlight`` marked."""
    return charts.runs_chart(
        [
            {
                "id": row["run"].pk,
                "label": row["run"].judge_label,
                "href": reverse("judging:run_detail", args=[project.slug, row["run"].pk]),
                "when": f"finished {timezone.localtime(row['run'].finished_at):%Y-%m-%d %H:%M}"
                if row["run"].finished_at
                else "finished",
                "agreement": row["agreement"],
                "cost": charts.run_cost(row["run"]),
                "tokens": row["run"].tokens_in + row["run"].tokens_out,
                "sent": row["sent"],
                "highlight": row["run"].pk in highlight,
            }
            for row in rows
        ]
    )


@login_required
@require_POST
def run_control(request: HttpRequest, slug: str, run_id: int, action: str) -> HttpResponse:
    """Cancel a run, resume it, or re-run its errors (logged as a ``ProjectChange``); queue its errors for SMEs.
    Leads and staff."""
    run = _get_run(request, slug, run_id)
    if action not in ("cancel", "resume", "retry-errors", "queue-errors"):
        raise Http404("No such action")
    if action == "queue-errors":
        try:
            queued = judge_run_queue_errors(run=run)
        except RunBusy as exc:
            messages.error(request, str(exc))
        else:
            messages.info(request, f"{queued} item{pluralize(queued)} without a verdict queued for SME review.")
        return redirect(run)
    if action == "cancel":
        judge_run_cancel(run=run)
    else:
        try:
            judge_run_resume(run=run, retry_errors=action == "retry-errors")
        except RunBusy as exc:
            messages.error(request, str(exc))
            return redirect(run)
    change = ProjectChange.Action.RUN_CONTROL
    project_change_record(project=run.project, user=request.user, action=change, run=run.pk, what=action)
    return redirect(run)


@login_required
@require_POST
def judge_run_start(request: HttpRequest, slug: str) -> HttpResponse:
    """Start a judge run over the project (leads and staff; logged as a ``ProjectChange``): the project's judge,
    or with POST ``local`` the local classifier, learning also from the verdicts of run ``learn_from`` when given
    (distillation)."""
    project = get_project_for_lead(request, slug)
    teacher = None
    if request.POST.get("learn_from"):
        try:
            teacher_id = parse_id(request.POST.get("learn_from"), "learn_from")
        except ValueError as exc:
            return HttpResponseBadRequest(str(exc), content_type="text/plain")
        teacher = get_object_or_404(JudgeRun, pk=teacher_id, project=project)
    if not request.POST.get("local") and teacher is None:
        try:
            judge_endpoint_check(project=project)
        except JudgeUnreachable as exc:
            messages.error(request, f"No run started. {exc}")
            return redirect(project)
    try:
        run = judge_run_create(
            project=project, user=request.user, local=bool(request.POST.get("local")), learn_from=teacher
        )
    except LearnFromError as exc:
        messages.error(request, str(exc))
        return redirect(project)
    project_change_record(
        project=project, user=request.user, action=ProjectChange.Action.RUN_START, run=run.pk, judge=run.judge_label
    )
    messages.info(request, f"Judge run {run.pk} started ({run.judge_label}).")
    return redirect(run)
