import json

from django import forms
from django.contrib import admin
from rest_framework.exceptions import ValidationError as DrfValidationError

from annotations.models import Project
from judging.label_functions import KINDS, validate_params
from judging.models import GateDecision, JudgeRun, LabelFunction, RuleHit, Verdict
from judging.services import gate_apply, label_functions_apply


class LabelFunctionForm(forms.ModelForm):
    """Checks the params against the kind's schema on save, with the schema's own messages."""

    kind = forms.ChoiceField(choices=[(k, k) for k in KINDS])

    class Meta:
        model = LabelFunction
        fields = ("project", "name", "kind", "field", "params", "reason", "active")
        help_texts = {"params": "JSON. Examples: " + "; ".join(f"{k}: {v.help}" for k, v in KINDS.items())}

    def clean(self):
        cleaned = super().clean()
        kind, params = cleaned.get("kind"), cleaned.get("params")
        if kind and params is not None:
            try:
                cleaned["params"] = validate_params(kind, params)
            except DrfValidationError as exc:
                self.add_error("params", json.dumps(exc.detail))
        return cleaned


@admin.register(LabelFunction)
class LabelFunctionAdmin(admin.ModelAdmin):
    form = LabelFunctionForm
    list_display = ("name", "project", "kind", "field", "reason", "active", "updated_at")
    list_filter = ("project", "kind", "active")
    search_fields = ("name", "reason")
    actions = ["apply_and_regate"]

    @admin.action(description="Run the active rules of the selected rules' projects, then re-gate them")
    def apply_and_regate(self, request, queryset):
        for project in Project.objects.filter(label_functions__in=queryset).distinct():
            hits = label_functions_apply(project=project)
            counts = gate_apply(project=project)
            self.message_user(request, f"{project}: {hits} rule hits; gate: {counts}")


@admin.register(JudgeRun)
class JudgeRunAdmin(admin.ModelAdmin):
    list_display = ("id", "project", "backend", "model", "status", "items_total", "items_done", "items_error")
    list_filter = ("project", "backend", "status")
    readonly_fields = ("created_at", "started_at", "finished_at")


@admin.register(Verdict)
class VerdictAdmin(admin.ModelAdmin):
    list_display = ("item", "run", "verdict", "tokens_in", "tokens_out", "latency_ms", "error")
    list_filter = ("verdict", "run")
    raw_id_fields = ("item", "run")
    show_full_result_count = False


@admin.register(RuleHit)
class RuleHitAdmin(admin.ModelAdmin):
    list_display = ("label_function", "item", "created_at")
    list_filter = ("label_function",)
    raw_id_fields = ("item",)


@admin.register(GateDecision)
class GateDecisionAdmin(admin.ModelAdmin):
    list_display = ("item", "outcome", "basis", "basis_decision", "vetoed", "decided_at")
    list_filter = ("outcome", "basis", "vetoed")
    raw_id_fields = ("item", "judge_run")
    show_full_result_count = False
