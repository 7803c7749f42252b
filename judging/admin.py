from urllib.parse import urlsplit

from django import forms
from django.contrib import admin
from django.template.response import TemplateResponse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.debug import sensitive_post_parameters
from rest_framework.exceptions import ValidationError as DrfValidationError

from annotations.admin import OwnsRecordsAdmin, ViewOnlyAdmin
from annotations.models import Project
from judging import prompts
from judging.label_functions import KINDS, validate_params
from judging.models import (
    GateDecision,
    GatingPolicy,
    GatingPolicyChange,
    JudgeEndpoint,
    JudgeRun,
    JudgeSettings,
    LabelFunction,
    LabelFunctionVersion,
    PolicyTier,
    RubricVersion,
    RuleHit,
    Verdict,
)
from judging.selectors import label_function_dry_run
from judging.services import judge_settings_save, label_function_delete, label_function_save, regate_request


class LabelFunctionForm(forms.ModelForm):
    """Checks the params against the kind's schema on save, with the schema's own messages."""

    kind = forms.ChoiceField(choices=[(k, k) for k in KINDS])

    class Meta:
        model = LabelFunction
        fields = ("project", "name", "kind", "field", "task_types", "params", "reason", "active")
        help_texts = {"params": "JSON. Examples: " + "; ".join(f"{k}: {v.example}" for k, v in KINDS.items())}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.instance.pk:
            # A new rule starts switched off: dry-run it first (the list's action), then switch it on.
            self.fields["active"].initial = False

    def clean_task_types(self):
        value = self.cleaned_data.get("task_types") or []
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            raise forms.ValidationError('a JSON list of task types, e.g. ["billing", "how_to"], or []')
        return value

    def clean(self):
        cleaned = super().clean()
        kind, params = cleaned.get("kind"), cleaned.get("params")
        if kind and params is not None:
            try:
                cleaned["params"] = validate_params(kind, params)
            except DrfValidationError as exc:
                for message in _messages(exc.detail):
                    self.add_error("params", message)
        return cleaned


def _messages(detail, prefix: str = "") -> list[str]:
    """DRF's nested error detail as flat ``"field: message"`` lines."""
    if isinstance(detail, dict):
        return [m for key, value in detail.items() for m in _messages(value, "" if key == "non_field_errors" else key)]
    if isinstance(detail, list):
        return [m for value in detail for m in _messages(value, prefix)]
    return [f"{prefix}: {detail}" if prefix else str(detail)]


class LabelFunctionVersionInline(admin.TabularInline):
    """The rule's history, newest first: who changed what, when, from what to what."""

    model = LabelFunctionVersion
    fk_name = "label_function"
    fields = ("version", "action", "changed_by", "changed_at", "before", "after")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(LabelFunction)
class LabelFunctionAdmin(OwnsRecordsAdmin):
    """Editing needs the model's change permission (staff with it, or superusers)."""

    form = LabelFunctionForm
    list_display = ("name", "project", "kind", "field", "reason", "active", "version", "updated_at")
    list_filter = ("project", "kind", "active")
    search_fields = ("name", "reason")
    readonly_fields = ("version",)
    inlines = [LabelFunctionVersionInline]
    actions = ["dry_run", "apply_and_regate"]

    def save_model(self, request, obj, form, change):
        label_function_save(rule=obj, user=request.user)

    def delete_model(self, request, obj):
        label_function_delete(rule=obj, user=request.user)

    def delete_queryset(self, request, queryset):
        for rule in queryset:
            label_function_delete(rule=rule, user=request.user)

    @admin.action(description="Dry run: what would the selected rules reject? (changes nothing)")
    def dry_run(self, request, queryset):
        results = [label_function_dry_run(label_function=rule) for rule in queryset.select_related("project")]
        context = {**self.admin_site.each_context(request), "title": "Dry run of label functions", "results": results}
        return TemplateResponse(request, "admin/judging/labelfunction/dry_run.html", context)

    @admin.action(description="Queue: run the active rules of the selected rules' projects, then re-gate them")
    def apply_and_regate(self, request, queryset):
        for project in Project.objects.filter(label_functions__in=queryset).distinct():
            generation = regate_request(project.pk)
            self.message_user(request, f"{project}: re-gating queued (request {generation}); see the project page")


@admin.register(LabelFunctionVersion)
class LabelFunctionVersionAdmin(ViewOnlyAdmin):
    list_display = ("__str__", "project", "action", "changed_by", "changed_at")
    list_filter = ("project", "action")


class JudgeSettingsForm(forms.ModelForm):
    """The rubric, few-shot count and rate limits, with messages that say what to enter instead."""

    class Meta:
        model = JudgeSettings
        fields = ("project", "rubric", "few_shot", "few_shot_pinned", "requests_per_minute", "tokens_per_minute")
        error_messages = {
            "rubric": {"required": "Write the criteria the judge applies; the default rubric is a good start."}
        }
        widgets = {"rubric": forms.Textarea(attrs={"rows": 12, "cols": 100})}

    # External ids one per line, stored as a list (the model's clean() checks them against the project).
    few_shot_pinned = forms.CharField(
        label="Pinned few-shot examples",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 40}),
        help_text=JudgeSettings._meta.get_field("few_shot_pinned").help_text,
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial["few_shot_pinned"] = "\n".join(self.instance.few_shot_pinned or [])

    def clean_rubric(self):
        # Browsers send CRLF; store what the hash will be taken of.
        return self.cleaned_data["rubric"].replace("\r\n", "\n").strip()

    def clean_few_shot_pinned(self) -> list[str]:
        return [line.strip() for line in self.cleaned_data["few_shot_pinned"].splitlines() if line.strip()]


class RubricVersionInline(admin.TabularInline):
    """Every version of the rubric, newest first; runs name the version they used."""

    model = RubricVersion
    fields = ("version", "changed_by", "changed_at", "sha256", "rubric")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(JudgeSettings)
class JudgeSettingsAdmin(admin.ModelAdmin):
    """A project's rubric (versioned), few-shot examples and rate limits for its LLM judge runs."""

    form = JudgeSettingsForm
    deleted_only_with_parent = True  # with its project
    list_display = ("project", "rubric_version", "few_shot", "requests_per_minute", "tokens_per_minute", "updated_at")
    readonly_fields = ("rubric_version", "always_added")
    inlines = [RubricVersionInline]

    def get_readonly_fields(self, request, obj=None):
        # A project's settings stay with that project.
        return ("project", *self.readonly_fields) if obj else self.readonly_fields

    @admin.display(description="Always added after the rubric and guidelines")
    def always_added(self, obj):
        return format_html('<pre class="larry-pre-wrap">{}</pre>', prompts.FIXED_INSTRUCTIONS)

    def save_model(self, request, obj, form, change):
        judge_settings_save(judge_settings=obj, user=request.user)

    def has_delete_permission(self, request, obj=None):
        return False  # the rubric's history goes with the row


class WriteOnlyKeyForm(forms.ModelForm):
    """A model form whose instance's ``api_key`` (200 characters at most) is write-only: never rendered, kept
    when left blank, replaced by typing a new one, or cleared."""

    api_key_new = forms.CharField(
        label="API key",
        required=False,
        max_length=200,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
    )
    api_key_clear = forms.BooleanField(label="Clear the stored API key", required=False)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        stored = "A key is stored" if self.instance.api_key else "No key is stored"
        self.fields["api_key_new"].help_text = (
            f"{stored}. Write-only: it is never shown again. Leave blank to keep the stored key; type a new one "
            "to replace it."
        )

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("api_key_new") and cleaned.get("api_key_clear"):
            raise forms.ValidationError("Either type a new key or clear the stored one, not both.")
        return cleaned

    def save(self, commit=True):
        row = super().save(commit=False)
        if self.cleaned_data.get("api_key_clear"):
            row.api_key = ""
        elif self.cleaned_data.get("api_key_new"):
            row.api_key = self.cleaned_data["api_key_new"]
        if commit:
            row.save()
        return row


class JudgeEndpointForm(WriteOnlyKeyForm):
    """A judge endpoint, with its API key write-only: never rendered, replaced by typing a new one."""

    class Meta:
        model = JudgeEndpoint
        fields = (  # every field but api_key
            "project",
            "name",
            "base_url",
            "model",
            "api_key_new",
            "api_key_clear",
            "max_in_flight",
            "price_in",
            "price_out",
            "is_default",
        )

    def clean(self):
        return connection_checked(self, super().clean(), who="judge")


def connection_checked(
    form: forms.ModelForm, cleaned: dict, *, who: str, default_url: str = "", default_model: str = ""
):
    """The admin's connection check of an endpoint form (a judge endpoint, a teacher's settings): when its URL,
    model or key changed, the server must answer ``judge_connection_check`` before the row is saved, not as a
    run of timeouts later; else the error goes on ``base_url``. A blank URL or model is checked as
    ``default_url``/``default_model`` (the environment's). Returns ``cleaned``."""
    checked = {"base_url", "model", "api_key_new", "api_key_clear"}
    url = cleaned.get("base_url") or default_url
    # A URL carrying credentials is refused by the model's validation, without being called.
    if url and "@" not in urlsplit(url).netloc and not form.errors and checked & set(form.changed_data):
        from judging.backends import JudgeConfig, JudgeUnreachable, judge_connection_check

        key = "" if cleaned.get("api_key_clear") else cleaned.get("api_key_new") or form.instance.api_key
        try:
            judge_connection_check(JudgeConfig(url, cleaned.get("model") or default_model, key), who=who)
        except JudgeUnreachable as exc:
            form.add_error("base_url", str(exc))
    return cleaned


@admin.register(JudgeEndpoint)
class JudgeEndpointAdmin(admin.ModelAdmin):
    """A project's judge servers: the default judge, and the endpoints a cascade's tiers name."""

    form = JudgeEndpointForm
    list_display = ("name", "project", "model", "base_url", "max_in_flight", "price_in", "price_out", "is_default")
    list_filter = ("project", "is_default")
    search_fields = ("name", "model", "project__name")

    def get_readonly_fields(self, request, obj=None):
        # An endpoint stays with its project (its runs name it).
        return ("project",) if obj else ()

    @method_decorator(sensitive_post_parameters("api_key_new"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        # Error reports (mails to ADMINS, the debug page) would otherwise list the typed key.
        return super().changeform_view(request, object_id, form_url, extra_context)


@admin.register(JudgeRun)
class JudgeRunAdmin(ViewOnlyAdmin):
    """Runs are started, cancelled and resumed on the project's pages (services with their checks), never here."""

    list_display = ("id", "project", "backend", "model", "status", "items_total", "items_done", "items_error")
    list_filter = ("project", "backend", "status")


@admin.register(Verdict)
class VerdictAdmin(ViewOnlyAdmin):
    list_display = ("item", "run", "verdict", "tokens_in", "tokens_out", "latency_ms", "error")
    list_filter = ("verdict", "run")
    raw_id_fields = ("item", "run")
    show_full_result_count = False


@admin.register(RuleHit)
class RuleHitAdmin(ViewOnlyAdmin):
    """Hits are replaced as a whole when the rules run (the label functions' "apply" action re-gates)."""

    list_display = ("label_function", "item", "version", "created_at")
    list_filter = ("label_function",)
    raw_id_fields = ("item",)


@admin.register(GateDecision)
class GateDecisionAdmin(ViewOnlyAdmin):
    """The gate's output; to change a decision, change what it is decided from (a review, a rule) and re-gate."""

    list_display = ("item", "outcome", "basis", "basis_decision", "vetoed", "decided_at")
    list_filter = ("outcome", "basis", "vetoed")
    raw_id_fields = ("item", "judge_run")
    show_full_result_count = False


class PolicyTierInline(admin.TabularInline):
    """The policy's tiers in order: which run decides, from what certainty."""

    model = PolicyTier
    fields = ("tier", "run", "threshold", "decides", "note")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(GatingPolicy)
class GatingPolicyAdmin(ViewOnlyAdmin):
    """Shown only: a lead changes the policy on the project's gating policy page (or the API, or
    ``run_judge --use``), through ``services.gating_policy_set``, so that every change is logged."""

    list_display = ("project", "label", "target_agreement", "risk", "updated_by", "updated_at")
    list_filter = ("project",)
    inlines = [PolicyTierInline]


@admin.register(GatingPolicyChange)
class GatingPolicyChangeAdmin(ViewOnlyAdmin):
    """The audit log of policy changes: append-only, never added, changed or deleted here."""

    list_display = ("__str__", "project", "changed_by", "changed_at")
    list_filter = ("project",)
    readonly_fields = ("project", "changed_by", "changed_at", "before", "after")
