"""Writes behind the project settings page: members, accounts, reject reasons and guidelines, and the log of
every change (``ProjectChange`` rows and the ``annotations.project_settings`` logger)."""

import hashlib
import json
import logging

from django.contrib.auth import get_user_model
from django.contrib.auth.tokens import default_token_generator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils.encoding import force_bytes
from django.utils.http import urlsafe_base64_encode

from annotations.models import Membership, Project, ProjectChange, validate_reject_reasons

logger = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A change the settings page refuses, with a message for the lead."""


def project_change_record(*, project: Project, user, action: str, account=None, **detail) -> ProjectChange:
    """Log one change: a ``ProjectChange`` row (``action`` one of ``ProjectChange.Action``, ``detail`` JSON-able,
    ``account`` the account the change made or gave a link for, if any) and an INFO line naming the project,
    the user's id and the detail."""
    change = ProjectChange.objects.create(
        project=project, changed_by=user, action=action, detail=detail, account=account
    )
    logger.info("project %s: %s by user %s: %s", project.slug, action, getattr(user, "pk", None), detail)
    return change


def _leads(project: Project):
    return project.memberships.filter(role=Membership.Role.LEAD)


def member_add(*, project: Project, login: str, role: str, user) -> Membership:
    """Make the existing account named ``login`` (its username, or its e-mail if one account has it) a member
    of ``project`` as ``role`` (``Membership.Role``), or change the role of a member; ``user`` is the lead.
    Raises SettingsError for no such account, an unknown role, or a change that would leave no lead."""
    if role not in Membership.Role.values:
        raise SettingsError(f"Unknown role {role[:40]!r}: sme or lead.")
    login = (login or "").strip()
    users = get_user_model().objects.filter(is_active=True)
    found = users.filter(username=login).first()
    if found is None and "@" in login:
        by_email = list(users.filter(email__iexact=login)[:2])
        found = by_email[0] if len(by_email) == 1 else None
    if found is None:
        raise SettingsError(f"No active account {login[:150]!r}: create one below.")
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)  # one membership change at a time
        membership = project.memberships.filter(user=found).first()
        if membership is None:
            membership = Membership.objects.create(project=project, user=found, role=role)
            project_change_record(
                project=project, user=user, action=ProjectChange.Action.MEMBER_ADD, member=found.username, role=role
            )
        elif membership.role != role:
            if membership.role == Membership.Role.LEAD and _leads(project).count() == 1:
                raise SettingsError(f"{found.username} is the project's only lead: add another lead first.")
            before, membership.role = membership.role, role
            membership.save(update_fields=["role"])
            project_change_record(
                project=project,
                user=user,
                action=ProjectChange.Action.MEMBER_ROLE,
                member=found.username,
                before=before,
                after=role,
            )
    return membership


def member_remove(*, project: Project, membership_id: int, user) -> str:
    """Remove a member from ``project``; returns their username. Their reviews stay (ground truth is not
    undone by leaving). Raises SettingsError for no such member, or for the project's only lead."""
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)
        membership = project.memberships.select_related("user").filter(pk=membership_id).first()
        if membership is None:
            raise SettingsError("No such member: the page may be out of date.")
        if membership.role == Membership.Role.LEAD and _leads(project).count() == 1:
            raise SettingsError(f"{membership.user.username} is the project's only lead: add another lead first.")
        name, role = membership.user.username, membership.role
        membership.delete()
        project_change_record(
            project=project, user=user, action=ProjectChange.Action.MEMBER_REMOVE, member=name, role=role
        )
    return name


def account_create(*, project: Project, username: str, email: str, role: str, user):
    """Create an account (no usable password) and make it a member of ``project`` as ``role``.

    Returns ``(new_user, path)``: ``path`` is the set-password page for the new account (Django's
    password-reset confirmation, valid ``PASSWORD_RESET_TIMEOUT`` seconds and until the password is set),
    to be shown once to the lead, who passes it on. Raises SettingsError for a bad or taken username, a bad
    e-mail or an unknown role."""
    model = get_user_model()
    if role not in Membership.Role.values:
        raise SettingsError(f"Unknown role {role[:40]!r}: sme or lead.")
    username, email = (username or "").strip(), (email or "").strip()
    candidate = model(username=username, email=email)
    try:
        candidate.clean_fields(exclude=["password"])
        validate_email(email)
    except ValidationError as exc:
        problems = exc.message_dict if hasattr(exc, "error_dict") else {"email": exc.messages}
        raise SettingsError("; ".join(f"{k}: {' '.join(v)}" for k, v in problems.items())) from None
    taken = SettingsError(f"The username {username!r} is taken: add that account above instead.")
    existing = model.objects.filter(username__iexact=username).first()
    if existing is not None:
        raise _already_created(project, existing, user) or taken
    try:
        with transaction.atomic():
            new = model.objects.create_user(username=username, email=email)  # password None: unusable
            Membership.objects.create(project=project, user=new, role=role)
            project_change_record(
                project=project,
                user=user,
                action=ProjectChange.Action.ACCOUNT_CREATE,
                account=new,
                member=username,
                role=role,
            )
    except IntegrityError:  # the same username, created by someone else since the check (or a double click)
        existing = model.objects.filter(username__iexact=username).first()
        raise (_already_created(project, existing, user) if existing else None) or taken from None
    return new, _set_password_path(new)


def _set_password_path(account) -> str:
    """Django's password-reset confirmation page for ``account``: valid ``PASSWORD_RESET_TIMEOUT`` seconds,
    and only until a password is chosen (the token hashes the password and the last login)."""
    uid = urlsafe_base64_encode(force_bytes(account.pk))
    return reverse("password_reset_confirm", args=[uid, default_token_generator.make_token(account)])


class AccountJustCreated(SettingsError):
    """ "Create account" for an account this project's settings page already created and whose owner has not
    chosen a password yet (a double click, a reload): ``membership`` is theirs, to issue a new link for."""

    def __init__(self, message: str, membership: Membership):
        super().__init__(message)
        self.membership = membership


def link_refusal(*, project: Project, account, created_here: bool | None = None) -> str:
    """Why a lead of ``project`` may not get a new set-password link for ``account`` ("" when they may).

    Only for an account this project's settings page created (a ``ProjectChange`` ``account_create`` row
    naming it by id: ``created_here`` when the caller already knows), active, not staff, never logged in and
    with no usable password: anything else could hand a lead someone else's account."""
    if created_here is None:
        created_here = ProjectChange.objects.filter(
            project=project, action=ProjectChange.Action.ACCOUNT_CREATE, account=account
        ).exists()
    name = account.get_username()
    if not created_here:
        return f"{name}'s account was not created on this project's settings page: ask an administrator."
    if account.has_usable_password() or account.last_login is not None:
        return f"{name} has chosen a password already: they can reset it themselves from the login page."
    if not account.is_active or account.is_staff or account.is_superuser:
        return f"{name}'s account is deactivated or has staff rights: ask an administrator."
    return ""


def _already_created(project: Project, account, user) -> "AccountJustCreated | None":
    """An AccountJustCreated if ``account`` (whose username "Create account" found taken) is a member this
    project's settings page created that may still be given a link; else None."""
    membership = project.memberships.filter(user=account).first()
    if membership is None or link_refusal(project=project, account=account):
        return None
    made = ProjectChange.objects.filter(
        project=project, action=ProjectChange.Action.ACCOUNT_CREATE, account=account
    ).select_related("changed_by")[0]
    by = "you" if made.changed_by_id == getattr(user, "pk", None) else made.changed_by or "another lead"
    return AccountJustCreated(
        f"The account {account.get_username()} was just created, by {by} at "
        f"{made.changed_at:%Y-%m-%d %H:%M} UTC, and has no password yet: issue a new set-password link for it "
        "below (the earlier link still works until a password is chosen).",
        membership,
    )


def set_password_link(*, project: Project, membership_id: int, user):
    """A new set-password link for a member of ``project`` whose account its settings page created and who
    has not chosen a password yet (``link_refusal``); logged as ``link_issue``.

    Returns ``(account, path)`` as ``account_create`` does. Earlier links stay valid until one is used.
    Raises SettingsError for no such member, or with ``link_refusal``'s reason."""
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)
        membership = project.memberships.select_related("user").filter(pk=membership_id).first()
        if membership is None:
            raise SettingsError("No such member: the page may be out of date.")
        account = membership.user
        refusal = link_refusal(project=project, account=account)
        if refusal:
            raise SettingsError(f"No link issued: {refusal}")
        project_change_record(
            project=project,
            user=user,
            action=ProjectChange.Action.LINK_ISSUE,
            account=account,
            member=account.get_username(),
        )
    return account, _set_password_path(account)


class SettingsConflict(SettingsError):
    """The settings changed since the lead's form was drawn (another tab, another lead)."""


def settings_fingerprint(project: Project) -> str:
    """A short hash of the project's reject reasons and guidelines, as the settings form carries it: a save
    from a form drawn before another change (``project_settings_save``'s ``seen``) is refused, not applied."""
    text = json.dumps([project.reject_reasons, project.guidelines], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def project_settings_save(
    *, project: Project, reject_reasons: list[str], guidelines: str, user, seen: str = ""
) -> list[str]:
    """Set the project's reject reasons (validated by ``validate_reject_reasons``; surrounding spaces dropped)
    and guidelines; log what changed (nothing if nothing did). Returns the names of the changed fields.
    ``seen``: the ``settings_fingerprint`` the lead's form was drawn with (empty: not checked). Raises
    SettingsError with the validator's message, SettingsConflict when ``seen`` is not the settings' current
    fingerprint (nothing saved). Reviews already given keep the reason they have."""
    reasons = [r.strip() for r in reject_reasons if r.strip()]
    try:
        validate_reject_reasons(reasons)
    except ValidationError as exc:
        raise SettingsError("Reject reasons: " + " ".join(exc.messages)) from None
    guidelines = (guidelines or "").replace("\r\n", "\n").strip()
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project.pk)
        if seen and seen != settings_fingerprint(project):
            raise SettingsConflict(
                "Not saved: the reject reasons or guidelines were changed since you opened this page (the log "
                "below says by whom). Your text is still in the form: save again to replace theirs with it."
            )
        changed = {}
        if project.reject_reasons != reasons:
            changed["reject_reasons"] = {"before": project.reject_reasons, "after": reasons}
        if project.guidelines != guidelines:
            changed["guidelines"] = {"before": project.guidelines, "after": guidelines}
        if changed:
            project.reject_reasons, project.guidelines = reasons, guidelines
            project.save(update_fields=["reject_reasons", "guidelines"])
            project_change_record(project=project, user=user, action=ProjectChange.Action.SETTINGS_EDIT, **changed)
    return list(changed)
