"""The rule editor: a project lead (no staff rights needed) writes, edits, switches on and off and deletes
label functions with a form per kind, and sees as they type what the rule would reject (a dry run over the
first items of the project, capped in items and time). Saving goes through ``services.label_function_save``,
so every change is versioned and queues a re-gating, as from the admin.

The params part of the form is derived from each kind's params serializer (``label_functions.KINDS``):
a boolean is a checkbox, a choice a menu, a multiple choice checkboxes, a list a text box with one entry a
line, an integer a number box, anything else a text box; a new kind needs no template change.
"""

import json
from dataclasses import dataclass, field

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from rest_framework import serializers

from annotations.models import Project
from annotations.views import get_project_for_lead
from judging.label_functions import KINDS, rule_compiled, validate_params
from judging.models import LabelFunction
from judging.selectors import DRY_RUN_MAX_ITEMS, DRY_RUN_SECONDS, label_function_dry_run
from judging.services import RuleVersionConflict, label_function_delete, label_function_save, rule_set_for

# Below this many SME-labelled rejections the conflict share is flagged as too few to mean much.
SMALL_N = 10


class RuleForm(forms.Form):
    """The fields every rule has; the params come from ``ParamField`` inputs named ``<kind>-<param>``."""

    name = forms.CharField(max_length=200)
    reason = forms.CharField(max_length=200, help_text="Recorded with the gate's decision when the rule rejects.")
    kind = forms.ChoiceField(choices=[(kind, kind.replace("_", " ")) for kind in KINDS])
    field = forms.ChoiceField(choices=LabelFunction.Field.choices, initial=LabelFunction.Field.RESPONSE)
    task_types = forms.CharField(
        required=False, max_length=2000, help_text="Comma-separated, e.g. billing, refunds; empty: every task type."
    )
    active = forms.BooleanField(required=False, initial=True)

    def __init__(self, *args, project: Project, rule: LabelFunction | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.project, self.rule = project, rule

    def clean_name(self) -> str:
        name = self.cleaned_data["name"].strip()
        others = LabelFunction.objects.filter(project=self.project, name=name)
        if self.rule is not None and self.rule.pk:
            others = others.exclude(pk=self.rule.pk)
        if others.exists():
            raise forms.ValidationError(f"This project already has a rule named {name!r}.")
        return name

    def clean_task_types(self) -> list[str]:
        return task_types_from(self.cleaned_data["task_types"])


def task_types_from(raw: str) -> list[str]:
    """``"billing, refunds"`` -> ``["billing", "refunds"]`` (blank entries dropped, order kept, no repeats)."""
    return list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


@dataclass
class ParamField:
    """One input of a kind's params: ``widget`` is checkbox, checkboxes, select, lines, number or text."""

    kind: str
    name: str
    widget: str
    label: str
    help: str = ""
    choices: list[tuple[str, str]] = field(default_factory=list)
    allow_null: bool = False
    min_value: int | None = None
    max_value: int | None = None
    value: object = None
    errors: list[str] = field(default_factory=list)

    @property
    def html_name(self) -> str:
        return f"{self.kind}-{self.name}"

    @property
    def checked(self) -> set[str]:
        """The ticked choices of a checkboxes widget."""
        return {str(v) for v in self.value or ()}


def _widget(serializer_field: serializers.Field) -> str:
    if isinstance(serializer_field, serializers.MultipleChoiceField):
        return "checkboxes"
    if isinstance(serializer_field, serializers.ChoiceField):
        return "select"
    if isinstance(serializer_field, serializers.BooleanField):
        return "checkbox"
    if isinstance(serializer_field, serializers.ListField):
        return "lines"
    if isinstance(serializer_field, serializers.IntegerField):
        return "number"
    return "text"


_HELP = {"lines": "One a line.", "number": "A whole number; empty: no bound."}


def param_fields(kind: str, params: dict | None = None) -> list[ParamField]:
    """The inputs of ``kind``'s params (from its serializer), holding ``params`` or the kind's defaults."""
    result = []
    for name, serializer_field in KINDS[kind].schema().fields.items():
        widget = _widget(serializer_field)
        default = serializer_field.default if serializer_field.default is not serializers.empty else None
        value = (params or {}).get(name, default)
        if widget == "lines":
            value = "\n".join(value or ())
        result.append(
            ParamField(
                kind=kind,
                name=name,
                widget=widget,
                label=name.replace("_", " "),
                help=_HELP.get(widget, "") if widget != "number" or serializer_field.allow_null else "",
                choices=[(str(k), str(v)) for k, v in getattr(serializer_field, "choices", {}).items()],
                allow_null=serializer_field.allow_null,
                min_value=getattr(serializer_field, "min_value", None),
                max_value=getattr(serializer_field, "max_value", None),
                value=value,
            )
        )
    return result


def params_from(kind: str, data: QueryDict) -> dict:
    """The params of ``kind`` as the form posted them (inputs ``<kind>-<param>``), not yet validated: the
    lines of a list without empty ones, ``None`` for an empty number that may be null, the ticked choices."""
    params: dict = {}
    for param in param_fields(kind):
        name = param.html_name
        if param.widget == "checkbox":
            params[param.name] = name in data
        elif param.widget == "checkboxes":
            params[param.name] = data.getlist(name)
        elif name not in data:
            continue
        elif param.widget == "lines":
            params[param.name] = [line for line in data[name].splitlines() if line.strip()]
        elif param.widget == "number" and not data[name].strip():
            if param.allow_null:
                params[param.name] = None
        else:
            params[param.name] = data[name]
    return params


def _messages(detail) -> list[str]:
    """DRF error detail (a string, a list, a dict by list index) as flat messages."""
    if isinstance(detail, dict):
        return [f"entry {k + 1 if isinstance(k, int) else k}: {m}" for k, v in detail.items() for m in _messages(v)]
    if isinstance(detail, list | tuple):
        return [m for d in detail for m in _messages(d)]
    return [str(detail)]


def param_errors(kind: str, error: serializers.ValidationError) -> dict[str, list[str]]:
    """A params ValidationError as ``{input name: [messages]}``: a param's under ``<kind>-<param>``, the
    field's and kind's under ``field`` and ``kind``, the rest (several params at once) under ``<kind>-all``."""
    detail = error.detail if isinstance(error.detail, dict) else {"params": error.detail}
    names = {param.name for param in param_fields(kind)} if kind in KINDS else set()
    errors: dict[str, list[str]] = {}
    for key, value in detail.items():
        name = f"{kind}-{key}" if key in names else key if key in ("field", "kind", "task_types") else f"{kind}-all"
        errors.setdefault(name, []).extend(_messages(value))
    return errors


def _rule_from(request: HttpRequest, project: Project, rule: LabelFunction | None, *, dry_run: bool = False):
    """``(form, rule, errors, compiled)``: the posted form, the rule it describes (unsaved),
    ``{input: [messages]}`` (empty when the rule may be saved; params validated with ``validate_params``,
    the whole rule compiled) and, for a ``dry_run``, ``(label_functions.CompiledRule, fresh)`` from the
    process's cache of compiled rules (validating and compiling 100,000 keywords takes seconds; a keystroke
    in another field must not pay them again), or None when the rule does not compile."""
    form = RuleForm(request.POST, project=project, rule=rule)
    errors = {name: list(messages_) for name, messages_ in form.errors.items()} if not form.is_valid() else {}
    kind = request.POST.get("kind", "")
    rule = rule or LabelFunction(project=project)
    rule.kind = kind
    rule.params = params_from(kind, request.POST) if kind in KINDS else {}
    for name in ("name", "reason", "field", "task_types", "active"):
        if name in form.cleaned_data:
            setattr(rule, name, form.cleaned_data[name])
    compiled = None
    if kind in KINDS:
        try:
            if dry_run and "field" in form.cleaned_data and "task_types" in form.cleaned_data:
                compiled = rule_compiled(kind, rule.params, rule.field, rule.task_types or ())
                rule.params = compiled[0].params
            else:
                rule.params = validate_params(kind, rule.params)
                if "field" in form.cleaned_data:
                    rule_set_for([rule])
        except serializers.ValidationError as exc:
            for name, found in param_errors(kind, exc).items():
                errors.setdefault(name, []).extend(found)
    return form, rule, errors, compiled


def _editor(request, project, rule, *, form=None, errors=None, status=200) -> HttpResponse:
    """The editor page for ``rule`` (unsaved for a new one), with the posted ``form`` and ``errors`` if any."""
    errors = errors or {}
    if form is None:
        initial = {"field": LabelFunction.Field.RESPONSE, "active": True, "kind": "keywords"}
        if rule.pk:
            initial = {
                "name": rule.name,
                "reason": rule.reason,
                "kind": rule.kind,
                "field": rule.field,
                "task_types": ", ".join(rule.task_types or ()),
                "active": rule.active,
            }
        form = RuleForm(initial=initial, project=project, rule=rule)
    chosen = form["kind"].value() or "keywords"
    kinds = []
    for kind in KINDS:
        posted = form.is_bound and kind == chosen
        fields = param_fields(kind, rule.params if kind == rule.kind and rule.params else None)
        if posted:  # show what the lead typed, not the defaults
            typed = params_from(kind, request.POST)
            for param in fields:
                if param.name in typed:
                    value = typed[param.name]
                    param.value = "\n".join(value) if param.widget == "lines" else value
        for param in fields:
            param.errors = errors.get(param.html_name, [])
        kinds.append(
            {"kind": kind, "fields": fields, "errors": errors.get(f"{kind}-all", []), "chosen": kind == chosen}
        )
    context = {
        "project": project,
        "rule": rule,
        "form": form,
        "kinds": kinds,
        "errors": errors,
        "versions": _versions(rule) if rule.pk else [],
        "max_items": f"{DRY_RUN_MAX_ITEMS:,}",
        "seconds": DRY_RUN_SECONDS,
    }
    return render(request, "judging/rule_edit.html", context, status=status)


def _versions(rule: LabelFunction) -> list[dict]:
    """The rule's history, newest first: each version with who, when, and ``changes``: ``(what, before,
    after)`` for each part that changed (everything, on creation), the values as JSON text."""
    rows = []
    for version in rule.versions.select_related("changed_by")[:100]:
        keys = list(dict.fromkeys([*version.after, *version.before]))
        changes = [
            (key, _json(version.before.get(key)), _json(version.after.get(key)))
            for key in keys
            if version.before.get(key) != version.after.get(key)
        ]
        rows.append({"version": version, "changes": changes})
    return rows


def _json(value) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _saved_message(rule: LabelFunction, before: int) -> str:
    if rule.version == before:
        return f"Rule {rule.name!r}: nothing changed, nothing to re-gate."
    return (
        f"Rule {rule.name!r} saved as version {rule.version}. Re-gating queued: the rules run again over every "
        "item and the gate decides them anew, in the background (the project page shows when it ends)."
    )


@login_required
def rule_new(request: HttpRequest, slug: str) -> HttpResponse:
    """A form for a new rule (GET); POST saves it (``label_function_save``) or shows the form with errors."""
    project = get_project_for_lead(request, slug)
    if request.method != "POST":
        return _editor(request, project, LabelFunction(project=project))
    form, rule, errors, _ = _rule_from(request, project, None)
    if errors:
        return _editor(request, project, rule, form=form, errors=errors, status=400)
    label_function_save(rule=rule, user=request.user)
    messages.info(request, _saved_message(rule, 0))
    return redirect("judging:rules", project.slug)


@login_required
def rule_edit(request: HttpRequest, slug: str, rule_id: int) -> HttpResponse:
    """A rule's form and its history (GET); POST saves the changes or shows the form with errors (400), or
    with a conflict (409, nothing saved) when POST ``version``, the version the form was opened at, is no
    longer the rule's: two tabs or two leads never overwrite each other silently."""
    project = get_project_for_lead(request, slug)
    rule = get_object_or_404(LabelFunction, project=project, pk=rule_id)
    if request.method != "POST":
        return _editor(request, project, rule)
    before = rule.version
    seen = request.POST.get("version", "")  # the version the form was opened at (the page's hidden input)
    form, rule, errors, _ = _rule_from(request, project, rule)

    def conflict(version: int) -> HttpResponse:  # saved meanwhile (another tab, another lead)
        latest = rule.versions.select_related("changed_by").order_by("-version", "-id").first()
        who = latest.changed_by.get_username() if latest and latest.changed_by else "someone"
        form.add_error(
            None,
            f"Not saved: {who} saved version {version} of this rule after you opened version {seen[:20]}; the "
            "history below shows what changed. Your edits are still in the form: save again to replace "
            f"version {version} with them.",
        )
        rule.version = version  # the form's hidden input: the next save replaces this version
        return _editor(request, project, rule, form=form, errors=errors, status=409)

    if seen and seen != str(before):  # no silent overwrite
        return conflict(before)
    if errors:
        return _editor(request, project, rule, form=form, errors=errors, status=400)
    try:  # checked again under the rule's lock: two saves at once from version ``seen``, one wins
        label_function_save(rule=rule, user=request.user, expected_version=int(seen) if seen.isdigit() else None)
    except RuleVersionConflict as exc:
        return conflict(exc.version)
    messages.info(request, _saved_message(rule, before))
    return redirect("judging:rules", project.slug)


@login_required
@require_POST
def rule_active(request: HttpRequest, slug: str, rule_id: int) -> HttpResponse:
    """Switch a rule on (``active=1``) or off (``active=0``), versioned and re-gated like any change."""
    project = get_project_for_lead(request, slug)
    rule = get_object_or_404(LabelFunction, project=project, pk=rule_id)
    before = rule.version
    rule.active = request.POST.get("active") == "1"
    try:
        label_function_save(rule=rule, user=request.user)
    except serializers.ValidationError as exc:  # stored before a kind's schema grew stricter: fix it first
        errors = param_errors(rule.kind, exc).items()
        problems = "; ".join(f"{k.removeprefix(rule.kind + '-')}: {' '.join(v)}" for k, v in errors)
        messages.error(request, f"Rule {rule.name!r} was not changed: {problems}")
        return redirect("judging:rule_edit", project.slug, rule.pk)
    messages.info(request, _saved_message(rule, before) + (" It is active." if rule.active else " It is inactive."))
    return redirect("judging:rule_edit", project.slug, rule.pk)


@login_required
@require_POST
def rule_delete(request: HttpRequest, slug: str, rule_id: int) -> HttpResponse:
    """Delete a rule when ``confirm`` is ticked (its history stays), and queue a re-gating."""
    project = get_project_for_lead(request, slug)
    rule = get_object_or_404(LabelFunction, project=project, pk=rule_id)
    if request.POST.get("confirm") != "yes":
        messages.error(request, f"Rule {rule.name!r} was not deleted: tick the box that confirms it.")
        return redirect("judging:rule_edit", project.slug, rule.pk)
    name = rule.name
    label_function_delete(rule=rule, user=request.user)
    messages.info(request, f"Rule {name!r} deleted (its history is kept). Re-gating queued, in the background.")
    return redirect("judging:rules", project.slug)


@login_required
@require_POST
def rule_dry_run(request: HttpRequest, slug: str) -> JsonResponse:
    """What the rule in the posted (unsaved) editor form would reject, as JSON, storing nothing.

    Reads at most ``DRY_RUN_MAX_ITEMS`` items in ``DRY_RUN_SECONDS`` (``selectors.label_function_dry_run``).
    200: ``{"items", "scanned", "complete", "would_reject", "sme": {"accepted", "rejected",
    "n", "share", "interval", "small_n"}, "examples": [{"id", "external_id", "url", "snippet": {"before",
    "match", "after"}, "sme"}], "compile": {"seconds", "fresh", "over_budget", "note"}}``: the rule is
    compiled once per kind, params, field and task types in this process (``label_functions.rule_compiled``),
    ``fresh`` when this request compiled it, ``over_budget`` (with a ``note`` for the lead) when compiling
    alone took longer than ``DRY_RUN_SECONDS``; 400: ``{"errors": {input name: [messages]}}`` for params that
    do not validate (name and reason are not needed for a dry run).
    """
    project = get_project_for_lead(request, slug)
    _, rule, errors, compiled = _rule_from(request, project, None, dry_run=True)
    errors = {k: v for k, v in errors.items() if k not in ("name", "reason", "active")}
    if errors or compiled is None:
        return JsonResponse({"errors": errors or {"kind": ["Choose a kind of rule."]}}, status=400)
    done, fresh = compiled
    result = label_function_dry_run(
        label_function=rule,
        max_items=DRY_RUN_MAX_ITEMS,
        seconds=DRY_RUN_SECONDS,
        examples=5,
        judge=False,
        rules=done.rules,
    )
    over = fresh and done.seconds > DRY_RUN_SECONDS
    n = result["sme_accepted"] + result["sme_rejected"]
    return JsonResponse(
        {
            "items": result["items"],
            "scanned": result["scanned"],
            "complete": result["complete"],
            "would_reject": result["would_reject"],
            "sme": {
                "accepted": result["sme_accepted"],
                "rejected": result["sme_rejected"],
                "n": n,
                "share": result["sme_accepted"] / n if n else None,
                "interval": result["sme_conflict_interval"],
                "small_n": n < SMALL_N,
            },
            "examples": [
                {
                    "id": e["id"],
                    "external_id": e["external_id"],
                    "url": reverse("judging:item_detail", args=(project.slug, e["id"])),
                    "snippet": e["snippet"],
                    "sme": e["sme"],
                }
                for e in result["examples"]
            ],
            "compile": {
                "seconds": round(done.seconds, 3),
                "fresh": fresh,
                "over_budget": over,
                "note": (
                    f"Compiling this rule alone took {done.seconds:.1f} s, over the dry run's {DRY_RUN_SECONDS:g} s "
                    "budget (its items were read after that). Changes to other fields reuse the compiled rule."
                    if over
                    else ""
                ),
            },
        }
    )
