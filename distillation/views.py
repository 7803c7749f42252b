"""Pages of training-set snapshots: the list with a form to snapshot a new one, and one snapshot (leads and staff)."""

from django import forms
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from rest_framework.exceptions import ValidationError

from annotations.views import get_project_for_lead
from distillation.models import TrainingSet
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
