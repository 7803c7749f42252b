"""The project settings page: a lead (no staff rights needed) adds and removes SMEs and leads, creates
accounts, edits the reject reasons and the guidelines, and runs the project (judge runs, re-gating, the
gating policy's page). Every change is logged (``annotations.project_settings``)."""

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from annotations.models import Membership, Project, ProjectChange
from annotations.project_settings import (
    AccountJustCreated,
    SettingsConflict,
    SettingsError,
    account_create,
    link_refusal,
    member_add,
    member_remove,
    project_settings_save,
    set_password_link,
    settings_fingerprint,
)
from annotations.views import form_problems, get_project_for_lead, parse_id
from judging.models import JudgeRun, RegateRequest
from judging.selectors import gating_policy

ROLE_CHOICES = Membership.Role.choices


class MemberAddForm(forms.Form):
    login = forms.CharField(max_length=254, label="Username or e-mail")
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Membership.Role.SME)


class AccountCreateForm(forms.Form):
    username = forms.CharField(max_length=150, label="New username")
    email = forms.EmailField(label="E-mail")
    role = forms.ChoiceField(choices=ROLE_CHOICES, initial=Membership.Role.SME, label="Role")


class ProjectSettingsForm(forms.Form):
    reject_reasons = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 6}),
        label="Reject reasons",
        help_text="One a line, 1 to 9 (SMEs press 1 to 9 to pick them).",
    )
    guidelines = forms.CharField(widget=forms.Textarea(attrs={"rows": 8}), required=False, label="Guidelines")
    # The settings_fingerprint the form was drawn with: a save from a stale tab is refused (SettingsConflict).
    seen = forms.CharField(widget=forms.HiddenInput, required=False, max_length=64)


def _members(project: Project) -> list[Membership]:
    """The project's memberships, each with ``link_offered``: whether a lead may issue a new set-password
    link for it (``link_refusal``)."""
    members = list(project.memberships.select_related("user").order_by("role", "user__username"))
    created_here = set(
        ProjectChange.objects.filter(
            project=project, action=ProjectChange.Action.ACCOUNT_CREATE, account__isnull=False
        ).values_list("account_id", flat=True)
    )
    for membership in members:
        account = membership.user
        membership.link_offered = account.pk in created_here and not link_refusal(
            project=project, account=account, created_here=True
        )
    return members


def _link_reply(request: HttpRequest, project: Project, account, path: str, *, again: bool) -> HttpResponse:
    """The page with the set-password link for ``account`` shown once (``again``: a new link, not a new
    account)."""
    context = _context(project)
    context["created"] = {
        "user": account,
        "link": request.build_absolute_uri(path),
        "days": settings.PASSWORD_RESET_TIMEOUT // 86400,
        "again": again,
    }
    return render(request, "judging/project_settings.html", context)


def _context(project: Project, **forms_given) -> dict:
    return {
        "project": project,
        "members": _members(project),
        "add_form": forms_given.get("add_form") or MemberAddForm(auto_id="id_add_%s"),
        "create_form": forms_given.get("create_form") or AccountCreateForm(auto_id="id_new_%s"),
        "settings_form": forms_given.get("settings_form")
        or ProjectSettingsForm(
            initial={
                "reject_reasons": "\n".join(project.reject_reasons),
                "guidelines": project.guidelines,
                "seen": settings_fingerprint(project),
            }
        ),
        "policy": gating_policy(project),
        "regating": RegateRequest.objects.filter(project=project).first(),
        "teachers": JudgeRun.objects.filter(
            project=project, status=JudgeRun.Status.FINISHED, backend=JudgeRun.Backend.OPENAI
        ),
        "changes": ProjectChange.objects.filter(project=project).select_related("changed_by")[:50],
    }


@login_required
def project_settings(request: HttpRequest, slug: str) -> HttpResponse:
    """GET: the page. POST ``action``: ``add`` (``login``, ``role``), ``create`` (``username``, ``email``,
    ``role``: the answer shows the new account's set-password link, once; a second "create" of an account
    just created answers 400 offering ``link``), ``link`` (``membership``: a new set-password link for an
    account this page created whose owner has no password yet, ``link_refusal``), ``remove`` (``membership``), or
    ``edit`` (``reject_reasons`` one a line, ``guidelines``, ``seen``: refused when the settings changed
    since the form was drawn). Leads and staff only: 403 for SMEs, 404 for
    outsiders. A refused change is said in a message and changes nothing. A lead who demoted or removed
    themselves is sent to the project's review page (or the project list), with a message."""
    project = get_project_for_lead(request, slug)
    if request.method != "POST":
        return render(request, "judging/project_settings.html", _context(project))
    action = request.POST.get("action", "")
    try:
        if action == "add":
            form = MemberAddForm(request.POST, auto_id="id_add_%s")
            if not form.is_valid():
                raise SettingsError(f"Not added: {form_problems(form)}")
            membership = member_add(project=project, user=request.user, **form.cleaned_data)
            messages.info(request, f"{membership.user.username} is now {membership.get_role_display()}.")
        elif action == "create":
            form = AccountCreateForm(request.POST, auto_id="id_new_%s")
            if not form.is_valid():
                raise SettingsError(f"No account created: {form_problems(form)}")
            new, path = account_create(project=project, user=request.user, **form.cleaned_data)
            return _link_reply(request, project, new, path, again=False)
        elif action == "link":
            account, path = set_password_link(
                project=project, membership_id=parse_id(request.POST.get("membership"), "member"), user=request.user
            )
            return _link_reply(request, project, account, path, again=True)
        elif action == "remove":
            name = member_remove(
                project=project, membership_id=parse_id(request.POST.get("membership"), "member"), user=request.user
            )
            messages.info(request, f"{name} is no longer a member.")
        elif action == "edit":
            form = ProjectSettingsForm(request.POST)
            if not form.is_valid():
                raise SettingsError(f"Not saved: {form_problems(form)}")
            changed = project_settings_save(
                project=project,
                reject_reasons=form.cleaned_data["reject_reasons"].splitlines(),
                guidelines=form.cleaned_data["guidelines"],
                user=request.user,
                seen=form.cleaned_data["seen"],
            )
            messages.info(request, f"Saved: {', '.join(changed).replace('_', ' ')}." if changed else "No change.")
        else:
            raise SettingsError(f"Unknown action {action[:40]!r}: add, create, remove, link or edit.")
    except (SettingsError, ValueError) as exc:
        messages.error(request, str(exc))
        if isinstance(exc, AccountJustCreated):  # a double click: offer the link, not the form again
            context = _context(project)
            context["just_created"] = exc.membership
            return render(request, "judging/project_settings.html", context, status=400)
        posted = request.POST.copy()
        if isinstance(exc, SettingsConflict):  # the form again, now drawn over the current settings
            project.refresh_from_db()
            posted["seen"] = settings_fingerprint(project)
        bound = {
            "add": ("add_form", lambda: MemberAddForm(request.POST, auto_id="id_add_%s")),
            "create": ("create_form", lambda: AccountCreateForm(request.POST, auto_id="id_new_%s")),
            "edit": ("settings_form", lambda: ProjectSettingsForm(posted)),
        }.get(action)
        if bound:  # the page again with what the lead typed, to correct it
            return render(
                request, "judging/project_settings.html", _context(project, **{bound[0]: bound[1]()}), status=400
            )
    if action in ("add", "remove") and not project.is_lead(request.user):
        # The lead demoted or removed themselves: this page is no longer theirs (it would answer 403).
        if project.memberships.filter(user=request.user).exists():
            messages.info(request, f"You are no longer a lead of {project.name}: the settings page is for its leads.")
            return redirect("annotations:review", project.slug)
        messages.info(request, f"You are no longer a member of {project.name}.")
        return redirect("annotations:project_list")
    return redirect("judging:project_settings", project.slug)
