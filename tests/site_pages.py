"""Every HTML page of the site, for each persona that may see it, over a project with something on every page.

Used by the Content-Security-Policy tests: tests/test_content_security_policy.py asks each page for its
header (and checks that this list covers every URL pattern), tests/test_csp_browser.py opens each in
Chromium and listens for violations.
"""

from dataclasses import dataclass, field
from types import SimpleNamespace

from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from annotations.models import Adjudication, ImportJob, Item, Membership, Project, Review, ReviewChange, SampleDraw
from annotations.project_settings import project_change_record
from annotations.queue import queue_add
from distillation.models import TeacherAnswer, TeacherRun, TeacherSettings, TrainingSet
from judging.models import JudgeEndpoint, JudgeRun, LabelFunction, Verdict
from judging.services import judge_settings_for, judge_settings_save, label_function_save
from tests.distillation.test_training_sets import decide_items

PASSWORDS = {"sme": "sme-pass-123", "lead": "lead-pass-123", "staff": "staff-pass-123", "root": "root-pass-123"}

# URL names that answer no HTML page, and why; everything under /api/ but the docs is JSON or a file too.
NOT_HTML = {
    "annotations:import_job_errors": "a CSV download",
    "admin:jsi18n": "JavaScript",
    "admin:autocomplete": "JSON",
    "admin:view_on_site": "a redirect",
    "judging:rule_dry_run": "JSON (the rule editor's live dry run)",
}


@dataclass(frozen=True)
class Page:
    """One request: ``persona`` (``None``: not logged in) asks for URL ``name`` with ``args``."""

    persona: str | None
    name: str
    args: tuple = ()
    method: str = "get"
    data: dict = field(default_factory=dict, hash=False, compare=False)
    htmx: bool = False
    status: int = 200

    @property
    def url(self) -> str:
        return reverse(self.name, args=self.args)

    def __str__(self) -> str:
        return f"{self.persona or 'anonymous'} {self.method.upper()} {self.url}"


def build_site(project: Project) -> dict:
    """Personas and rows for every page of ``project`` (the conftest's, with its SME): a decided set with a
    finished run, items queued for review, an SME review with history, a disagreement and an adjudication,
    a second run to compare, a running run and a building training set (pages that poll), an import."""
    users = get_user_model().objects
    sme = users.get(username="sme")
    sme.set_password(PASSWORDS["sme"])
    sme.save()
    lead = users.create_user("lead", password=PASSWORDS["lead"])
    Membership.objects.create(project=project, user=lead, role=Membership.Role.LEAD)
    staff = users.create_user("staff", password=PASSWORDS["staff"], is_staff=True)
    root = users.create_superuser("root", password=PASSWORDS["root"])
    bob = users.create_user("bob")
    Membership.objects.create(project=project, user=bob)

    run = decide_items(project)
    queued = [
        Item.objects.create(project=project, external_id=f"q{i}", prompt=f"Question {i}?", response=f"Answer {i}.")
        for i in range(4)
    ]
    queue_add(project=project, item_ids=[item.pk for item in queued])
    disputed = Item.objects.create(project=project, external_id="disputed", prompt="Is it 4?", response="It is 5.")
    review = Review.objects.create(item=disputed, reviewer=sme, decision="accept")
    Review.objects.create(item=disputed, reviewer=bob, decision="reject", reason="inaccurate")
    ReviewChange.objects.create(item=disputed, reviewer=sme, action="create", after={"decision": "accept"})
    settled = Item.objects.create(project=project, external_id="settled", prompt="p", response="r")
    Adjudication.objects.create(item=settled, decided_by=lead, decision="reject", reason="lead says so")

    other = JudgeRun.objects.create(
        project=project, backend="openai", model="judge-8b", status="finished", finished_at=timezone.now()
    )
    for item in project.items.all()[:6]:
        Verdict.objects.create(run=other, item=item, verdict="accept", rationale="Fine.")
    running = JudgeRun.objects.create(project=project, backend="openai", model="judge-8b", status="running")
    training_set = TrainingSet.objects.create(project=project, created_by=lead, format="chat")
    job = ImportJob.objects.create(
        project=project, file="imports/x.jsonl", filename="x.jsonl", format="jsonl", created_by=lead, status="done"
    )
    judge_settings_save(judge_settings=judge_settings_for(project), user=root)
    Group.objects.create(name="leads")
    Token.objects.create(user=lead)
    AccessAttempt.objects.create(
        username="mallory", ip_address="203.0.113.66", user_agent="curl", failures_since_start=3
    )
    AccessLog.objects.create(username="lead", ip_address="127.0.0.1", user_agent="Chromium")
    AccessFailureLog.objects.create(username="mallory", ip_address="203.0.113.66", user_agent="curl")
    rule = LabelFunction.objects.get(project=project)
    rule.reason = "a competitor named"
    label_function_save(rule=rule, user=root, regate=False)  # a version in its history
    JudgeEndpoint.objects.create(project=project, name="big judge", base_url="http://127.0.0.1:9/v1", model="j")
    SampleDraw.objects.create(project=project, design="uniform", seed=1, size=4, drawn=0, created_by=lead)
    project_change_record(project=project, user=lead, action="member_add", member="bob", role="sme")
    TeacherSettings.objects.create(project=project, base_url="http://127.0.0.1:9/v1", model="sensei")
    teacher_run = TeacherRun.objects.create(
        project=project, model="sensei", base_url="http://127.0.0.1:9/v1", selection="rejected", status="running"
    )
    TeacherAnswer.objects.create(run=teacher_run, item=disputed, error_class="refusal")
    return {
        "users": {"sme": sme, "lead": lead, "staff": staff, "root": root},
        "run": run,
        "other_run": other,
        "running_run": running,
        "training_set": training_set,
        "teacher_run": teacher_run,
        "job": job,
        "review": review,
        "queued": queued,
        "rule": rule,
    }


def site_pages(project: Project, site: dict) -> list[Page]:
    """Every HTML page, for each persona who may see it: the SME pages for SME, lead and staff, the leads'
    pages for lead and staff, the admin (every model's list, add, change, history and delete pages) for a
    superuser, and the log-in page and the API docs for anyone."""
    slug = project.slug
    pages = [
        Page(None, "login"),
        Page(None, "admin:login"),
        Page(None, "api_docs"),
        Page(None, "password_reset_confirm", ("MQ", "no-such-token")),  # says the link is invalid
        Page(None, "password_reset_complete"),
    ]
    for persona in ("sme", "lead", "staff"):
        pages += [
            Page(persona, "annotations:project_list"),
            Page(persona, "annotations:api_token"),
            Page(persona, "annotations:review", (slug,)),
            Page(persona, "annotations:agreement", (slug,)),
            Page(persona, "api_docs"),
        ]
    pages += [
        Page("sme", "annotations:my_reviews", (slug,)),
        Page("sme", "annotations:review_change", (slug, site["review"].pk)),
        Page("sme", "annotations:adjudication", (slug,), status=403),  # the 403 page
        Page("sme", "judging:project_detail", (slug,), status=403),
        Page("sme", "judging:gating_policy", (slug,), status=403),
        Page("sme", "judging:items", (slug,), status=403),
        Page("sme", "judging:rule_new", (slug,), status=403),
        Page("sme", "annotations:review_skip", (slug, site["queued"][0].pk), method="post", htmx=True),
        # The SME, lead and staff visits to the review screen above leased q0, q1 and q2; after the skip of q0 the
        # SME holds q3. A decision on q1 gets the conflict card (409); the one on q3 is stored.
        Page(
            "sme", "annotations:review_decide", (slug, site["queued"][1].pk), "post", {"decision": "accept"}, True, 409
        ),
        Page("sme", "annotations:review_decide", (slug, site["queued"][3].pk), "post", {"decision": "accept"}, True),
        # Each request logs in afresh, so the session holds no decision to undo: the card says so (400).
        Page("sme", "annotations:review_undo", (slug,), method="post", htmx=True, status=400),
    ]
    run, running = site["run"], site["running_run"]
    for persona in ("lead", "staff"):
        pages += [
            Page(persona, "annotations:adjudication", (slug,)),
            Page(persona, "annotations:import", (slug,)),
            Page(persona, "annotations:import_job", (slug, site["job"].pk)),
            Page(persona, "judging:project_detail", (slug,)),
            Page(persona, "judging:rules", (slug,)),
            Page(persona, "judging:rule_new", (slug,)),
            Page(persona, "judging:rule_edit", (slug, site["rule"].pk)),
            Page(persona, "judging:gating_policy", (slug,)),
            Page(persona, "judging:project_settings", (slug,)),
            Page(persona, "distillation:training_sets", (slug,)),
            Page(persona, "distillation:training_set_detail", (slug, site["training_set"].pk)),
            Page(persona, "judging:run_detail", (slug, run.pk)),
            Page(persona, "judging:run_detail", (slug, running.pk)),
            Page(persona, "judging:run_detail", (slug, running.pk), htmx=True),  # the poll's partial
            Page(persona, "judging:items", (slug,)),
            Page(persona, "judging:items", (slug,), htmx=True),  # the filtered results' partial
            Page(persona, "judging:item_detail", (slug, site["review"].item_id)),
        ]
    # The admin before the posts: a re-gating replaces the rule hits whose pages are listed.
    pages += admin_pages()
    pages += [
        Page("lead", "annotations:adjudication", (slug,), "post", {"item": "abc"}, status=400),
        Page("lead", "annotations:sample_draw", (slug,), "post", {"size": "0"}, status=302),  # refused, said
        Page("lead", "judging:runs_compare", (slug,)),  # ?a=&b= added by query()
        Page("sme", "judging:run_control", (slug, run.pk, "cancel"), method="post", status=403),
        Page("staff", "judging:run_control", (slug, running.pk, "cancel"), method="post", status=302),
        Page("lead", "judging:regate", (slug,), method="post", status=302),
        Page("lead", "judging:rule_new", (slug,), "post", {"kind": "regex", "regex-pattern": "("}, status=400),
        Page("lead", "judging:rule_active", (slug, site["rule"].pk), "post", {"active": "1"}, status=302),
        Page("lead", "judging:rule_delete", (slug, site["rule"].pk), method="post", status=302),  # unconfirmed
        Page("lead", "judging:run_recalibrate", (slug, run.pk), method="post", status=302),
        Page("lead", "judging:certify", (slug,), "post", {"target": "0.9", "delta": "0.1"}, status=302),
        Page("lead", "judging:items_bulk", (slug,), "post", {"action": "queue", "item": "abc"}, status=302),  # said
        Page("lead", "judging:judge_run_start", (slug,), method="post", status=302),
        Page("lead", "distillation:teacher_runs", (slug,)),
        Page("lead", "distillation:teacher_runs", (slug,), htmx=True),  # the progress poll's partial
        Page("lead", "distillation:teacher_run_cancel", (slug, site["teacher_run"].pk), method="post", status=302),
        Page("lead", "distillation:teacher_check", (slug,), method="post", status=302),  # refused, said
        # The items list's "Send to the teacher" over every filtered item: the page that confirms the count.
        Page("lead", "distillation:teacher_run_from_items", (slug,), "post", {"scope": "filtered"}),
        Page("lead", "judging:project_settings", (slug,), "post", {"action": "edit", "reject_reasons": ""}, status=400),
    ]
    pages += [Page("sme", "logout", method="post", status=302), Page("root", "admin:logout", method="post", status=302)]
    return pages


def query(page: Page, site: dict) -> dict:
    """GET parameters some pages need."""
    if page.name == "judging:runs_compare":
        return {"a": site["run"].pk, "b": site["other_run"].pk}
    return {}


def admin_pages() -> list[Page]:
    """The admin's pages for a superuser: index, each app, each model's list and add page, and the change,
    history and delete pages of its first row; password changes."""
    pages = [
        Page("root", "admin:index"),
        Page("root", "admin:password_change"),
        Page("root", "admin:password_change_done"),
    ]
    # Enough of a request for the ModelAdmin permission methods: an unsaved superuser.
    root = SimpleNamespace(user=get_user_model()(is_active=True, is_staff=True, is_superuser=True))
    apps = set()
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        apps.add(meta.app_label)
        prefix = f"admin:{meta.app_label}_{meta.model_name}"
        pages.append(Page("root", f"{prefix}_changelist"))
        pages.append(Page("root", f"{prefix}_add", status=200 if model_admin.has_add_permission(root) else 403))
        first = model._default_manager.order_by("pk").first()
        if first is not None:
            pages.append(Page("root", f"{prefix}_change", (first.pk,)))
            pages.append(Page("root", f"{prefix}_history", (first.pk,)))
            deletable = model_admin.has_delete_permission(root, first)
            pages.append(Page("root", f"{prefix}_delete", (first.pk,), status=200 if deletable else 403))
        if meta.label == "auth.User":
            user = model._default_manager.get(username="lead")
            pages.append(Page("root", "admin:auth_user_password_change", (user.pk,)))
    pages += [Page("root", "admin:app_list", (app,)) for app in sorted(apps)]
    return pages


def url_names() -> list[tuple[str, str]]:
    """``(name, route)`` of every named URL pattern, names with their namespaces."""

    def walk(patterns, prefix: str, namespace: str):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
            elif isinstance(pattern, URLPattern) and pattern.name:
                yield namespace + pattern.name, prefix + str(pattern.pattern)

    return list(walk(get_resolver().url_patterns, "", ""))


def html_url_names() -> set[str]:
    """The URL names that answer HTML: all but /api/ (JSON and files; its docs excepted) and NOT_HTML."""
    return {
        name
        for name, route in url_names()
        if name not in NOT_HTML and (name == "api_docs" or not route.lstrip("^").startswith("api/"))
    }
