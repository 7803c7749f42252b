"""SME-facing pages: project list, review screen (htmx), my reviews, agreement, adjudication; leads' import page."""

import csv
import re
from datetime import datetime
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST
from rest_framework.authtoken.models import Token

from annotations import queue
from annotations.importers import ImportFormatError
from annotations.models import ImportJob, Item, Membership, Project, Review, ReviewChange, SampleDraw
from annotations.sampling import DEFAULT_UNIFORM_SHARE, STRATA_FIELDS, SamplingError, sample_draw
from annotations.selectors import (
    agreement_report,
    disagreement_filter_choices,
    disagreements_filtered,
    projects_for,
)
from annotations.services import (
    OTHER,
    OTHER_PREFIX,
    ReviewConflict,
    ReviewError,
    adjudicate,
    import_job_create,
    review_edit,
    review_skip,
    review_submit,
    review_undo,
)
from annotations.spreadsheets import neutralise_formula

# Errors listed on an import's page; all of them are in the CSV download.
ERRORS_SHOWN = 100

# A row id in a form field or query string: digits only, and few enough to fit a bigint.
_ID = re.compile(r"[0-9]{1,18}")


def form_problems(form) -> str:
    """A bound form's errors on one line for a flash message: ``"field: message; other: message"``."""
    return "; ".join(f"{field}: {' '.join(errors)}" for field, errors in form.errors.items())


def parse_id(raw: str | None, what: str) -> int:
    """The id a client sent (``raw``, from POST or GET) as an int; ``what`` names it in the error.

    Raises ValueError with a message for people ("The item id 'abc' is not a number.") when ``raw``
    is missing, blank, or anything but 1 to 18 ASCII digits (``int()`` alone would also take
    ``" 1"``, ``"1_0"`` or Arabic-Indic digits).
    """
    if not raw:
        raise ValueError(f"No {what} id was given.")
    if not _ID.fullmatch(raw):
        raise ValueError(f"The {what} id {raw[:40]!r} is not a number.")
    return int(raw)


# How many decisions back an SME can undo, per project and browser session.
UNDO_DEPTH = 50


def _undo_key(project: Project) -> str:
    """The session key of the SME's decisions in this project, oldest first (undo is per project)."""
    return f"larry_undo_{project.pk}"


def _count_key(project: Project) -> str:
    """The session key of how many decisions the SME made in this project in this session (less undone ones)."""
    return f"larry_decisions_{project.pk}"


def get_project_for_user(request: HttpRequest, slug: str) -> Project:
    """The project if the user may see it; 404 otherwise (no hint that it exists)."""
    project = get_object_or_404(Project, slug=slug)
    if not project.is_visible_to(request.user):
        raise Http404("No such project")
    return project


def get_project_for_lead(request: HttpRequest, slug: str) -> Project:
    """The project if the user leads it (or is staff): what the judge and the rules said is for leads,
    since SMEs review blind. 404 for outsiders, 403 for SMEs."""
    project = get_project_for_user(request, slug)
    if not project.is_lead(request.user):
        raise PermissionDenied("Only project leads and staff see the judge's and the rules' results.")
    return project


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    led = set(request.user.memberships.filter(role=Membership.Role.LEAD).values_list("project_id", flat=True))
    return render(request, "annotations/project_list.html", {"projects": projects_for(request.user), "led": led})


def _restored(item: Item | None, reviewer) -> dict | None:
    """What the SME had entered on ``item`` before undoing their decision on it (``decision``, ``reason``,
    ``reason_other``, ``comment``, ``corrected_response``), so the card shows it again; None otherwise.

    Read from history: the item's last change by this SME is an undo, whose ``before`` is the decision."""
    if item is None:
        return None
    last = ReviewChange.objects.filter(item=item, reviewer=reviewer).order_by("-changed_at", "-id").first()
    if last is None or last.action != ReviewChange.Action.UNDO:
        return None
    return _form_values(last.before, item)


def _form_values(snapshot: dict, item: Item) -> dict:
    """A stored decision's ``snapshot()`` as the review form's values: an "other: <words>" reason split into
    ``OTHER`` and ``reason_other``, and the correction box holding the response when there is no correction."""
    values = {"reason_other": "", **snapshot}
    if values.get("reason", "").startswith(OTHER_PREFIX):
        values["reason"], values["reason_other"] = OTHER, values["reason"][len(OTHER_PREFIX) :]
    values["corrected_response"] = values.get("corrected_response") or item.response
    return values


def _card(
    request: HttpRequest,
    project: Project,
    error: str = "",
    status: int = 200,
    notice: str = "",
    posted: Item | None = None,
) -> HttpResponse:
    """The review card with the SME's next item: the partial for htmx, else the whole page.

    On an item whose decision the SME undid, the card holds what they had entered (reason, comment,
    correction); after a refused decision on ``posted``, still theirs, what they had just posted.
    """
    item = queue.next_item(project=project, reviewer=request.user)
    entered = _restored(item, request.user)
    if posted is not None and item is not None and posted.pk == item.pk:
        entered = {name: request.POST.get(name, "") for name in ("reason", "reason_other", "comment")}
        entered["corrected_response"] = request.POST.get("corrected_response", "") or item.response
    context = {
        "project": project,
        "item": item,
        "progress": queue.progress(project=project, reviewer=request.user),
        "reasons": project.reject_reasons,
        "other": OTHER,
        "entered": entered or {},
        "restored": entered is not None and posted is None,
        "undo_depth": len(request.session.get(_undo_key(project), [])),
        "session_decisions": request.session.get(_count_key(project), 0),
        "error": error,
        "notice": notice,
    }
    # An error answers with its status and a working card, for htmx too: review.js swaps a 400 or 409 card in.
    template = "annotations/review.html#card" if request.htmx else "annotations/review.html"
    return render(request, template, context, status=status)


def _leased_at(request: HttpRequest) -> datetime | None:
    """When the lease the card was shown under began (sent back by the review form); None if absent or bad.

    It only chooses the words of a conflict ("your lease expired"), so a bad value (not a time with its
    offset, or one in the future) is ignored.
    """
    try:
        value = datetime.fromisoformat(request.POST.get("leased_at", ""))
    except ValueError:
        return None
    return value if timezone.is_aware(value) and value <= timezone.now() else None


@login_required
def review(request: HttpRequest, slug: str) -> HttpResponse:
    """The review screen: the SME's next item, blind to the judge and the rules."""
    return _card(request, get_project_for_user(request, slug))


@login_required
@require_POST
def review_decide(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    """Store an accept/reject and answer with the next item."""
    project = get_project_for_user(request, slug)
    item = get_object_or_404(Item, pk=item_id, project=project)
    item.project = project  # the same row: review_submit reads its reasons without fetching it again
    try:
        stored = review_submit(
            item=item,
            reviewer=request.user,
            decision=request.POST.get("decision", ""),
            reason=request.POST.get("reason", ""),
            reason_other=request.POST.get("reason_other", ""),
            comment=request.POST.get("comment", ""),
            corrected_response=request.POST.get("corrected_response", ""),
            leased_at=_leased_at(request),
        )
    except ReviewConflict as exc:
        # Not the SME's item any more (another tab decided it, the lease went to another SME): say so, with
        # their current item.
        return _card(request, project, str(exc), status=409)
    except ReviewError as exc:
        return _card(request, project, str(exc), status=400, posted=item)
    request.session[_undo_key(project)] = [*request.session.get(_undo_key(project), []), stored.pk][-UNDO_DEPTH:]
    request.session[_count_key(project)] = request.session.get(_count_key(project), 0) + 1
    return _next_card(request, project)


def _next_card(request: HttpRequest, project: Project) -> HttpResponse:
    """After a stored decision or skip: the next card for htmx; a plain form post is redirected to the
    review screen (post/redirect/get), so a reload never posts again and the address is the screen's."""
    if request.htmx:
        return _card(request, project)
    return redirect("annotations:review", slug=project.slug)


@login_required
@require_POST
def review_skip_item(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    """Pass on the item: it goes back to the queue for others."""
    project = get_project_for_user(request, slug)
    item = get_object_or_404(Item, pk=item_id, project=project)
    try:
        review_skip(item=item, reviewer=request.user, leased_at=_leased_at(request))
    except ReviewConflict as exc:
        return _card(request, project, str(exc), status=409)
    return _next_card(request, project)


@login_required
@require_POST
def review_undo_last(request: HttpRequest, slug: str) -> HttpResponse:
    """Undo this session's last decision still undoable: the item comes back to the SME with what they entered.

    Several undos go back several decisions (up to ``UNDO_DEPTH``), newest first; a decision that is gone
    meanwhile (edited away by staff, deleted) is passed over.
    """
    project = get_project_for_user(request, slug)
    stack = list(request.session.get(_undo_key(project), []))
    stored = None
    while stack and stored is None:
        stored = Review.objects.filter(pk=stack.pop(), reviewer=request.user, item__project=project).first()
    request.session[_undo_key(project)] = stack
    if stored is None:
        return _card(request, project, "nothing to undo", status=400)
    item = review_undo(review=stored, reviewer=request.user)
    request.session[_count_key(project)] = max(request.session.get(_count_key(project), 0) - 1, 0)
    return _card(
        request,
        project,
        notice=f"Undone: your decision on {item.external_id} ({stored.decision}) was taken back; "
        "what you entered is back in the form.",
    )


@login_required
def my_reviews(request: HttpRequest, slug: str) -> HttpResponse:
    """The SME's own decisions in the project, newest first, each editable."""
    project = get_project_for_user(request, slug)
    reviews = Review.objects.filter(item__project=project, reviewer=request.user).select_related("item")
    return render(
        request, "annotations/my_reviews.html", {"project": project, "reviews": reviews.order_by("-updated_at")[:500]}
    )


@login_required
def review_change(request: HttpRequest, slug: str, review_id: int) -> HttpResponse:
    """Edit one of the SME's past decisions; every change is kept in history."""
    project = get_project_for_user(request, slug)
    stored = get_object_or_404(Review, pk=review_id, item__project=project, reviewer=request.user)
    error = ""
    if request.method == "POST":
        try:
            review_edit(
                review=stored,
                reviewer=request.user,
                decision=request.POST.get("decision", ""),
                reason=request.POST.get("reason", ""),
                reason_other=request.POST.get("reason_other", ""),
                comment=request.POST.get("comment", ""),
                corrected_response=request.POST.get("corrected_response", ""),
            )
            return redirect("annotations:my_reviews", slug=project.slug)
        except ReviewError as exc:
            error = str(exc)
    if error:
        entered = {name: request.POST.get(name, "") for name in ("reason", "reason_other", "comment")}
        entered["corrected_response"] = request.POST.get("corrected_response", "")
    else:
        entered = _form_values(stored.snapshot(), stored.item)
    context = {
        "project": project,
        "review": stored,
        "item": stored.item,
        "reasons": project.reject_reasons,
        "other": OTHER,
        "entered": entered,
        "error": error,
    }
    return render(request, "annotations/review_change.html", context, status=400 if error else 200)


def agreement_figures(report: dict) -> list[dict]:
    """The headline figures of ``selectors.agreement_report`` for ``_agreement_figures.html``: each with its
    name, value, 95 % interval, n, what n counts, and why it is undefined when it is."""
    kappa_undefined = "one label throughout" if report["reviewers"] == 2 else "only with exactly two SMEs"
    common = {"small_n": report["small_n"]}
    return [
        {
            **common,
            "id": "cohen-kappa",
            "name": "Cohen's \N{GREEK SMALL LETTER KAPPA} (two SMEs)",
            "value": report["cohen_kappa"],
            "ci": report["cohen_kappa_ci"],
            "n": report["cohen_kappa_n"],
            "what": "items both SMEs reviewed",
            "undefined": kappa_undefined,
        },
        {
            **common,
            "id": "krippendorff-alpha",
            "name": "Krippendorff's \N{GREEK SMALL LETTER ALPHA} (nominal)",
            "value": report["krippendorff_alpha"],
            "ci": report["krippendorff_alpha_ci"],
            "n": report["items"],
            "what": "items reviewed by two or more SMEs",
            "undefined": "one label throughout",
        },
    ]


@login_required
def agreement(request: HttpRequest, slug: str) -> HttpResponse:
    """Inter-SME agreement: Cohen's kappa, Krippendorff's alpha, each SME against the consensus; each with
    n and a 95 % interval, flagged when n is too small to mean anything."""
    project = get_project_for_user(request, slug)
    report = agreement_report(project)
    for row in report["per_sme"]:
        row["bar"] = round((row["agreement"] or 0) * 240)
        row["whisker"] = [150 + round(x * 240) for x in row["ci"]] if row["ci"] else None
    context = {
        "project": project,
        "report": report,
        "figures": agreement_figures(report),
        "chart_height": 20 + 28 * len(report["per_sme"]),
        "is_lead": project.is_lead(request.user),
    }
    return render(request, "annotations/agreement.html", context)


ADJUDICATION_FILTERS = ("reviewer", "task_type", "source_model", "reject_reason", "q")


@login_required
def adjudication(request: HttpRequest, slug: str) -> HttpResponse:
    """Leads decide items the SMEs disagreed on, one at a time; the decision becomes the ground truth.

    GET ``?reviewer=&task_type=&source_model=&reject_reason=&q=`` filters the open disagreements (an SME who
    reviewed the item, exact task type and source model, a reject reason given, text in the prompt or
    response); ``item`` picks one of them, else the first. A POST decides ``item`` and goes on to the next
    one under the same filters. Keyboard: see the page's key legend.
    """
    project = get_project_for_user(request, slug)
    if not project.is_lead(request.user):
        raise PermissionDenied("Only project leads adjudicate.")
    source = request.POST if request.method == "POST" else request.GET
    filters = {name: source.get(name, "").strip()[:200] for name in ADJUDICATION_FILTERS}
    open_items = disagreements_filtered(project, **filters)
    error, status, current = "", 200, None
    if request.method == "POST":
        try:
            item_id = parse_id(request.POST.get("item"), "item")
        except ValueError as exc:
            error, status = str(exc), 400
        else:
            item = get_object_or_404(Item, pk=item_id, project=project)
            try:
                adjudicate(
                    item=item,
                    lead=request.user,
                    decision=request.POST.get("decision", ""),
                    reason=request.POST.get("reason", ""),
                )
            except ReviewError as exc:
                error, status, current = str(exc), 400, item
            else:
                query = {k: v for k, v in filters.items() if v}
                after = open_items.filter(pk__gt=item.pk).values_list("pk", flat=True).first()
                if after is not None:
                    query["item"] = after
                messages.success(request, f"Adjudicated {item.external_id}: {request.POST['decision']}.")
                target = reverse("annotations:adjudication", args=[project.slug])
                return redirect(f"{target}?{urlencode(query)}" if query else target)
    ids = list(open_items.values_list("pk", flat=True))
    if current is None:
        try:
            wanted = parse_id(request.GET.get("item"), "item") if request.GET.get("item") else None
        except ValueError:
            wanted = None
        position = ids.index(wanted) if wanted in ids else 0
        current = Item.objects.get(pk=ids[position]) if ids else None
    else:
        position = ids.index(current.pk) if current.pk in ids else 0
    reviews = (
        Review.objects.filter(item=current).select_related("reviewer").order_by("id") if current is not None else []
    )
    query = {k: v for k, v in filters.items() if v}

    def link(index: int) -> str | None:
        if not 0 <= index < len(ids):
            return None
        return "?" + urlencode({**query, "item": ids[index]})

    report = agreement_report(project)
    context = {
        "project": project,
        "item": current,
        "reviews": reviews,
        "position": position + 1,
        "total": len(ids),
        "all_open": report["disagreements"],
        "previous": link(position - 1) if current is not None else None,
        "next": link(position + 1) if current is not None else None,
        "filters": filters,
        "filter_query": urlencode(query),
        "choices": disagreement_filter_choices(project),
        "error": error,
        "figures": agreement_figures(report),
        "report": report,
    }
    return render(request, "annotations/adjudication.html", context, status=status)


@login_required
def api_token(request: HttpRequest) -> HttpResponse:
    """Show the user's own API token (created on first visit); POST replaces it with a new one."""
    if request.method == "POST":
        Token.objects.filter(user=request.user).delete()
        messages.info(request, "A new API token replaces the old one, which no longer works.")
        return redirect("annotations:api_token")
    token, _ = Token.objects.get_or_create(user=request.user)
    return render(request, "annotations/api_token.html", {"token": token})


class ImportForm(forms.Form):
    """The upload form: a JSONL or CSV file, its format (detected when left on auto), prior labels or not."""

    file = forms.FileField(help_text="JSONL (one JSON object a line) or CSV with a header row.")
    format = forms.ChoiceField(
        choices=[("", "Detect from the file"), *ImportJob.Format.choices], required=False, label="Format"
    )
    import_labels = forms.BooleanField(
        required=False, initial=True, label="Import prior labels (human_label: accept/reject) as SME reviews"
    )


@login_required
def import_upload(request: HttpRequest, slug: str) -> HttpResponse:
    """Leads upload a file to import; the import runs as a Celery task and has a page of its own."""
    project = get_project_for_lead(request, slug)
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = import_job_create(
                project=project,
                upload=form.cleaned_data["file"],
                fmt=form.cleaned_data["format"],
                import_labels=form.cleaned_data["import_labels"],
                user=request.user,
            )
        except ImportFormatError as exc:
            form.add_error("file", str(exc))
        else:
            return redirect(job)
    jobs = ImportJob.objects.filter(project=project).select_related("created_by")[:20]
    status = 400 if form.errors else 200
    return render(request, "annotations/import.html", {"project": project, "form": form, "jobs": jobs}, status=status)


def _get_job(request: HttpRequest, slug: str, job_id: int) -> ImportJob:
    project = get_project_for_lead(request, slug)
    return get_object_or_404(ImportJob.objects.select_related("project", "created_by"), pk=job_id, project=project)


@login_required
def import_job(request: HttpRequest, slug: str, job_id: int) -> HttpResponse:
    """An import's live progress (the partial, polled by htmx while it runs), then its report."""
    job = _get_job(request, slug, job_id)
    errors = job.report.get("errors", [])
    context = {"project": job.project, "job": job, "errors": errors[:ERRORS_SHOWN], "n_errors": len(errors)}
    if request.htmx:
        return render(request, "annotations/import_job.html#progress", context)
    return render(request, "annotations/import_job.html", context)


@login_required
def import_job_errors(request: HttpRequest, slug: str, job_id: int) -> HttpResponse:
    """Every line the import did not store, as CSV (``line,reason``)."""
    job = _get_job(request, slug, job_id)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{job.pk}-errors.csv"'
    writer = csv.writer(response)
    writer.writerow(["line", "reason"])
    for error in job.report.get("errors", []):
        # The reasons quote untrusted text: no formula may reach a spreadsheet.
        writer.writerow([error["line"], neutralise_formula(error["reason"])])
    return response


class SampleDrawForm(forms.Form):
    """A lead's SME sample draw from the project page (``annotations.sampling.sample_draw``)."""

    size = forms.IntegerField(min_value=1, max_value=1_000_000, initial=50)
    design = forms.ChoiceField(choices=SampleDraw.Design.choices, initial=SampleDraw.Design.UNIFORM)
    seed = forms.IntegerField(min_value=0, max_value=2**63 - 1, initial=0)
    strata = forms.ChoiceField(
        choices=[("", "—"), *((f, f.replace("_", " ")) for f in STRATA_FIELDS)],
        required=False,
        help_text="for the stratified design",
    )
    allocation = forms.ChoiceField(choices=SampleDraw.Allocation.choices, initial="proportional")
    uniform_share = forms.FloatField(min_value=0.01, max_value=1.0, initial=DEFAULT_UNIFORM_SHARE)


@login_required
@require_POST
def sample_draw_form(request: HttpRequest, slug: str) -> HttpResponse:
    """Draw items for the SMEs by a recorded design (leads and staff); back to the project page with the outcome.

    A draw of more than ``LARRY_SAMPLE_INLINE_MAX_ITEMS`` items is made in the background (``sample_draw`` with
    ``later``): the page lists it as queued or running and refreshes the table until it is done."""
    project = get_project_for_lead(request, slug)
    form = SampleDrawForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"No items drawn: {form_problems(form)}")
        return redirect(project)
    later = form.cleaned_data["size"] > settings.LARRY_SAMPLE_INLINE_MAX_ITEMS
    try:
        strata = form.cleaned_data["strata"] or None
        draw = sample_draw(project=project, user=request.user, later=later, **{**form.cleaned_data, "strata": strata})
    except SamplingError as exc:
        messages.error(request, f"No items drawn: {exc}")
        return redirect(project)
    draw.refresh_from_db()  # a background draw is made already when tasks run in the caller
    if draw.status == SampleDraw.Status.FAILED:  # e.g. not started: the task broker could not be reached
        messages.error(request, f"No items drawn: draw {draw.pk} failed: {draw.error}")
        return redirect(project)
    if draw.status != SampleDraw.Status.DONE:
        messages.success(
            request,
            f"Draw {draw.pk} ({draw.get_design_display()}, seed {draw.seed}) of {draw.size} items is being made in "
            "the background: the table of draws shows when its items are in the SME queue.",
        )
        return redirect(project)
    messages.success(
        request,
        f"Draw {draw.pk} ({draw.get_design_display()}, seed {draw.seed}): {draw.drawn} of {draw.population} items "
        "added to the SME queue.",
    )
    return redirect(project)
