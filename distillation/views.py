"""Pages of training-set snapshots (the list with a form to snapshot a new one, and one snapshot) and the project
page's teacher-run section (leads and staff)."""

from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from annotations.views import get_project_for_lead, parse_id
from distillation.models import TeacherRun, TrainingSet
from distillation.teacher import NoTeacher, TeacherUnreachable, teacher_config_for
from distillation.teacher_runs import (
    teacher_check,
    teacher_judges_itself,
    teacher_run_cancel,
    teacher_run_create,
    teacher_run_report,
)
from distillation.training_sets import training_set_create
from judging.models import JudgeRun


class TrainingSetForm(forms.Form):
    """The snapshot options as a browser form; ``distillation.serializers.TrainingSetOptions`` validates them."""

    name = forms.CharField(max_length=200, required=False)
    format = forms.ChoiceField(choices=TrainingSet.Format.choices, initial=TrainingSet.Format.CHAT)
    system_prompt = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, strip=False)
    validation_fraction = forms.FloatField(min_value=0, max_value=0.5, initial=0.1, label="Validation share")
    seed = forms.IntegerField(initial=0)
    dedupe = forms.BooleanField(required=False, initial=True, label="Drop duplicate rows")
    source_models = forms.MultipleChoiceField(required=False, help_text="None selected: all.")
    task_types = forms.MultipleChoiceField(required=False, help_text="None selected: all.")
    judge_run = forms.TypedChoiceField(required=False, coerce=int, empty_value=None, label="Only items judged by run")
    created_after = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    created_before = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, project, **kwargs):
        super().__init__(*args, **kwargs)
        items = project.items.order_by()
        for field, column in (("source_models", "source_model"), ("task_types", "task_type")):
            values = items.exclude(**{column: ""}).values_list(column, flat=True).distinct().order_by(column)[:200]
            self.fields[field].choices = [(v, v) for v in values]
        runs = JudgeRun.objects.filter(project=project, status=JudgeRun.Status.FINISHED)
        self.fields["judge_run"].choices = [("", "any")] + [
            (run.pk, f"run {run.pk}: {run.judge_label}") for run in runs
        ]

    def options(self) -> dict:
        """The cleaned data in the shape ``training_set_create`` takes."""
        data = self.cleaned_data
        filters = {key: data[key] for key in ("source_models", "task_types") if data[key]}
        if data["judge_run"] is not None:
            filters["judge_run"] = data["judge_run"]
        for key in ("created_after", "created_before"):
            if data[key]:
                filters[key] = data[key].isoformat()
        fields = ("name", "format", "system_prompt", "validation_fraction", "seed", "dedupe")
        return {**{key: data[key] for key in fields}, "filters": filters}


@login_required
def training_sets_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The project's training-set snapshots, and a form to snapshot a new one (leads and staff)."""
    project = get_project_for_lead(request, slug)
    form = TrainingSetForm(request.POST or None, project=project)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                training_set = training_set_create(project=project, options=form.options(), user=request.user)
        except ValidationError as exc:
            for field, problems in exc.detail.items():
                form.add_error(field if field in form.fields else None, "; ".join(map(str, problems)))
        else:
            return redirect(training_set)
    context = {"project": project, "form": form, "training_sets": TrainingSet.objects.filter(project=project)[:50]}
    return render(request, "distillation/training_sets.html", context, status=400 if form.errors else 200)


@login_required
def training_set_detail(request: HttpRequest, slug: str, training_set_id: int) -> HttpResponse:
    """One snapshot: build progress (live), counts, download links, lineage, and its report."""
    project = get_project_for_lead(request, slug)
    training_set = get_object_or_404(TrainingSet.objects.select_related("project"), pk=training_set_id, project=project)
    context = {"project": project, "training_set": training_set}
    if request.htmx:
        return render(request, "distillation/training_set_detail.html#status", context)
    report = training_set.report or {}
    context.update(
        duplicates=report.get("duplicates", [])[:200],
        unwritable=report.get("unwritable", [])[:200],
        api=reverse("training-set-detail", args=[project.slug, training_set.pk]).rstrip("/"),
    )
    return render(request, "distillation/training_set_detail.html", context)


class TeacherRunForm(forms.Form):
    items = forms.ChoiceField(
        choices=[c for c in TeacherRun.Selection.choices if c[0] != TeacherRun.Selection.ITEMS],
        initial=TeacherRun.Selection.REJECTED,
        label="Answer",
    )
    judge = forms.BooleanField(
        required=False,
        initial=True,
        label="Judge what it writes when done",
        help_text="with the gating policy's judges; without a policy nothing is judged",
    )


def _teacher_runs_context(project) -> dict:
    runs = list(TeacherRun.objects.filter(project=project).prefetch_related("judge_runs")[:10])
    for run in runs:
        run.report = teacher_run_report(run)
        run.judged_by_itself = teacher_judges_itself(project, run.model, run.base_url)
    try:
        teacher = teacher_config_for(project)
    except NoTeacher as exc:
        teacher, missing = None, str(exc)
    else:
        missing = ""
    return {
        "project": project,
        "teacher_runs": runs,
        "teacher": teacher,
        "no_teacher": missing,
        "teacher_form": TeacherRunForm(),
        "active": any(
            not run.finished or any(j.status in ("queued", "running") for j in run.judge_runs.all()) for run in runs
        ),
        "teacher_judges_itself": teacher is not None
        and teacher_judges_itself(project, teacher.model, teacher.base_url),
    }


@login_required
def teacher_runs_part(request: HttpRequest, slug: str) -> HttpResponse:
    """The project page's teacher section (leads and staff), loaded and refreshed by htmx while a run is active:
    runs with progress, what the gate made of their answers, and a button to start one (POST)."""
    project = get_project_for_lead(request, slug)
    if request.method == "POST":
        form = TeacherRunForm(request.POST)
        if form.is_valid():
            try:
                teacher_check(project)  # a teacher that does not answer fails now, not as a run of timeouts
                run = teacher_run_create(
                    project=project,
                    selection=form.cleaned_data["items"],
                    user=request.user,
                    judge=form.cleaned_data["judge"],
                )
            except (NoTeacher, TeacherUnreachable, ValueError) as exc:  # TeacherRunBusy too: a second click
                messages.error(request, str(exc))
            else:
                messages.success(request, f"Teacher run {run.pk} started over {run.items_total} items.")
        if not request.htmx:
            return redirect(project)
    return render(request, "distillation/_teacher_runs.html", _teacher_runs_context(project))


@login_required
@require_POST
def teacher_run_from_items(request: HttpRequest, slug: str) -> HttpResponse:
    """The items list's "Send to the teacher" (leads and staff; POST with CSRF): a teacher run (``items``, judged
    by the gating policy when done) over the ticked items (``item``, repeated), or, with ``scope=filtered``, over
    every item the list's filters match (its form's hidden fields), at most ``BULK_MAX``. For the filtered items
    the count is confirmed first: without ``confirm`` equal to how many match now, a page asks to confirm that
    count (re-posting the same fields). A teacher's answers among them are left out (a run answers originals).
    Back to the items list with what was done."""
    from judging.items import BULK_MAX, ItemFilterForm, items_filtered

    project = get_project_for_lead(request, slug)
    form = ItemFilterForm(request.POST, project=project)
    filters = form.filters()
    query = {**filters, **({"sort": form.sort_name} if form.sort_name != "-id" else {})}
    back = reverse("judging:items", args=[project.slug]) + (f"?{urlencode(query)}" if query else "")
    items = items_filtered(project, filters, form.run_id).filter(answers__isnull=True)
    try:
        if request.POST.get("scope") == "filtered":
            ids = list(items.order_by("pk").values_list("pk", flat=True)[: BULK_MAX + 1])
        else:
            ticked = [parse_id(raw, "item") for raw in request.POST.getlist("item")]
            if not ticked:
                raise ValueError("tick some items, or choose all the filtered items")
            ids = list(items.filter(pk__in=ticked).order_by("pk").values_list("pk", flat=True))
        if not ids:
            raise ValueError("none of the chosen items can be sent (a teacher's answers are not sent again)")
        if len(ids) > BULK_MAX:
            raise ValueError(f"more than {BULK_MAX:,} items: narrow the filter first")
        if request.POST.get("scope") == "filtered" and request.POST.get("confirm") != str(len(ids)):
            fields = [(k, v) for k in request.POST if k not in ("csrfmiddlewaretoken", "confirm") for v in
                      request.POST.getlist(k)]  # fmt: skip
            return render(
                request,
                "distillation/teacher_confirm.html",
                {"project": project, "count": len(ids), "fields": fields, "back": back},
            )
        teacher_check(project)
        run = teacher_run_create(project=project, selection="items", user=request.user, item_ids=ids, judge=True)
    except (NoTeacher, TeacherUnreachable, ValueError) as exc:
        messages.error(request, f"Nothing sent to the teacher: {exc}")
        return redirect(back)
    messages.success(
        request,
        f"Teacher run {run.pk} started over {run.items_total} item{pluralize(run.items_total)}; its answers are "
        "judged by the gating policy when it is done (logged).",
    )
    return redirect(back)


@login_required
@require_POST
def teacher_check_view(request: HttpRequest, slug: str) -> HttpResponse:
    """Check the project's teacher now (leads and staff): a ``GET /models`` to it (``teacher_runs.teacher_check``,
    no redirect followed), the models it serves or the fault said in a message; the section again for htmx, else
    back to the project page."""
    project = get_project_for_lead(request, slug)
    try:
        base_url, served = teacher_check(project)
    except (NoTeacher, TeacherUnreachable) as exc:
        messages.error(request, str(exc))
    else:
        models = f"it serves {', '.join(served[:10])}" if served else "it gave no model list"
        messages.success(request, f"The teacher at {base_url} answers: {models}.")
    if not request.htmx:
        return redirect(project)
    return render(request, "distillation/_teacher_runs.html", _teacher_runs_context(project))


@login_required
@require_POST
def teacher_run_cancel_view(request: HttpRequest, slug: str, run_id: int) -> HttpResponse:
    """Cancel a teacher run (leads and staff); the section again for htmx, else back to the project page."""
    project = get_project_for_lead(request, slug)
    teacher_run_cancel(run=get_object_or_404(TeacherRun, pk=run_id, project=project))
    if not request.htmx:
        return redirect(project)
    return render(request, "distillation/_teacher_runs.html", _teacher_runs_context(project))
