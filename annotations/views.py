"""SME-facing pages: the project list and the review screen (htmx)."""

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST

from annotations.models import Item, Project
from annotations.selectors import next_item_for_review, projects_for, queue_progress
from annotations.services import REJECT_REASONS, ReviewError, review_submit


def get_project_for_user(request: HttpRequest, slug: str) -> Project:
    """The project if the user may see it; 404 otherwise (no hint that it exists)."""
    project = get_object_or_404(Project, slug=slug)
    if not project.is_visible_to(request.user):
        raise Http404("No such project")
    return project


@login_required
def project_list(request: HttpRequest) -> HttpResponse:
    return render(request, "annotations/project_list.html", {"projects": projects_for(request.user)})


def _review_context(project: Project, user, error: str = "") -> dict:
    return {
        "project": project,
        "item": next_item_for_review(project=project, reviewer=user),
        "progress": queue_progress(project=project),
        "reasons": REJECT_REASONS,
        "error": error,
    }


@login_required
def review(request: HttpRequest, slug: str) -> HttpResponse:
    """The review screen: the next queued item, blind to the judge and the rules."""
    project = get_project_for_user(request, slug)
    return render(request, "annotations/review.html", _review_context(project, request.user))


@login_required
@require_POST
def review_decide(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    """Store an accept/reject and answer with the next item (the card partial for htmx)."""
    project = get_project_for_user(request, slug)
    item = get_object_or_404(Item, pk=item_id, project=project)
    error = ""
    try:
        review_submit(
            item=item,
            reviewer=request.user,
            decision=request.POST.get("decision", ""),
            reason=request.POST.get("reason", ""),
        )
    except ReviewError as exc:
        error = str(exc)
    context = _review_context(project, request.user, error)
    if request.htmx:
        # htmx swaps only 2xx answers; the card shows the error itself.
        return render(request, "annotations/review.html#card", context)
    return render(request, "annotations/review.html", context, status=400 if error else 200)
