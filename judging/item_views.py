"""The items list, its bulk actions and the item page: for project leads and staff (``get_project_for_lead``:
404 for outsiders, 403 for SMEs, who review blind)."""

import time
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import push_url

from annotations.queue import in_sme_queue
from annotations.views import get_project_for_lead, parse_id
from judging.items import (
    BULK_MAX,
    COUNT_CAP,
    PAGE_SIZE,
    BulkError,
    ItemFilterForm,
    bulk_actions_elsewhere,
    count_capped,
    count_estimate,
    item_story,
    items_bulk_act,
    items_filtered,
    items_page,
)
from judging.models import ItemBulkAction


def _query(form: ItemFilterForm, **extra) -> str:
    """The query string of the form's filters and sort, plus ``extra`` (for page links, bulk redirects)."""
    params = {k: v for k, v in form.filters().items()}
    if form.sort_name != "-id":
        params["sort"] = form.sort_name
    params.update({k: v for k, v in extra.items() if v is not None})
    return urlencode(params)


@login_required
def items_list(request: HttpRequest, slug: str) -> HttpResponse:
    """The project's items, filtered (``judging.items.ItemFilterForm``), sorted, one keyset page at a time, with
    a capped count (``?count=exact`` counts them all), and the bulk actions' form. htmx asks for the results
    part alone."""
    project = get_project_for_lead(request, slug)
    started = time.perf_counter()
    form = ItemFilterForm(request.GET, project=project)
    filters, run_id = form.filters(), form.run_id
    items = items_filtered(project, filters, run_id, sort=form.sort_name)
    page = items_page(items, sort=form.sort_name, after=request.GET.get("after"), before=request.GET.get("before"))
    # One reverse() for the page, not two a row: the item URL with a placeholder id.
    prefix = reverse("judging:item_detail", args=[project.slug, 0]).removesuffix("0/")
    back = "?" + urlencode({"back": _query(form)})
    for row in page.rows:
        row["url"] = f"{prefix}{row['id']}/{back}"
    first_page = not request.GET.get("after") and not request.GET.get("before")
    if first_page and len(page.rows) < PAGE_SIZE:  # the whole list is on this page: no count query
        count, capped = len(page.rows), False
    elif request.GET.get("count") == "exact":
        count, capped = items.order_by().count(), False
    else:
        count, capped = count_capped(items, sort=form.sort_name)
    estimate = count_estimate(items) if capped else None
    # The filter, the page and the count, as the Server-Timing header reports them (bench/items_list.py).
    query_ms = (time.perf_counter() - started) * 1000
    context = {
        "project": project,
        "form": form,
        "filters": filters,
        "run_id": run_id,
        "page": page,
        "count": count,
        "capped": capped,
        "estimate": estimate if estimate is None else max(estimate, COUNT_CAP),
        "count_cap": COUNT_CAP,
        "bulk_max": BULK_MAX,
        "query": _query(form),
        "next_query": _query(form, after=page.after) if page.after else None,
        "prev_query": _query(form, before=page.before) if page.before else None,
        "exact_query": _query(form, count="exact"),
        "recent": ItemBulkAction.objects.filter(project=project).select_related("created_by")[:5],
        "bulk_elsewhere": [
            {"label": a.label, "url": reverse(a.url_name, args=[project.slug]), "note": a.note}
            for a in bulk_actions_elsewhere()
        ],
    }
    if request.htmx:
        # The address bar gets the filters in force only, not every empty field of the form.
        clean = reverse("judging:items", args=[project.slug]) + (f"?{context['query']}" if context["query"] else "")
        response = push_url(render(request, "judging/items.html#results", context), clean)
    else:
        response = render(request, "judging/items.html", context)
    response["Server-Timing"] = f'items;desc="filter, page and count";dur={query_ms:.1f}'
    return response


@login_required
@require_POST
def items_bulk(request: HttpRequest, slug: str) -> HttpResponse:
    """Do a bulk action (POST ``action``: ``queue`` or ``audit`` with ``size`` and ``seed``) on the items ticked
    (``item``, repeated) or, with ``scope=filtered``, on every item the list's filters (sent along as the
    form's hidden fields) match; back to the list with what was done."""
    project = get_project_for_lead(request, slug)
    form = ItemFilterForm(request.POST, project=project)
    filters = form.filters()
    back = reverse("judging:items", args=[project.slug]) + "?" + _query(form)
    try:
        item_ids = None
        if request.POST.get("scope") != "filtered":
            item_ids = [parse_id(raw, "item") for raw in request.POST.getlist("item")]
            if not item_ids:
                raise BulkError("tick some items, or choose all the filtered items")
        size = parse_id(request.POST.get("size"), "size") if request.POST.get("size") else None
        seed = parse_id(request.POST.get("seed"), "seed") if request.POST.get("seed") else 0
        record = items_bulk_act(
            project=project,
            user=request.user,
            action=request.POST.get("action", ""),
            items=items_filtered(project, filters, form.run_id),
            filters=filters,
            item_ids=item_ids,
            size=size,
            seed=seed,
        )
    except ValueError as exc:  # BulkError, a malformed id
        messages.error(request, f"Nothing done: {exc}.")
        return redirect(back)
    what = f"{record.matched} item{pluralize(record.matched)}"
    if record.action == ItemBulkAction.Action.QUEUE:
        already = record.matched - record.queued
        messages.success(
            request, f"Queued {record.queued} of {what} for SME review ({already} were queued already; logged)."
        )
    elif record.draw is not None:
        messages.success(
            request,
            f"Audit draw {record.draw.pk} (seed {record.seed}): {record.queued} of {record.population} accepted "
            "items queued for SME review (a recorded audit design; logged).",
        )
    else:
        messages.success(
            request,
            f"Audit sample (seed {record.seed}): {record.queued} of the {record.population} accepted items among "
            f"{what} queued for SME review (logged; a slice, not a recorded design: the estimate does not use it).",
        )
    return redirect(back)


@login_required
def item_detail(request: HttpRequest, slug: str, item_id: int) -> HttpResponse:
    """One item: its text, the gate's outcome and why, reviews and their history, every run's verdict, rule
    hits with the rule's version, sample draws and training sets."""
    project = get_project_for_lead(request, slug)
    item = get_object_or_404(project.items.annotate(in_sme_queue=in_sme_queue()), pk=item_id)
    # Back to the list as the lead left it: the query string is ours to put after our own path, nothing else.
    back = reverse("judging:items", args=[project.slug]) + "?" + request.GET.get("back", "")[:2000]
    context = {"project": project, "item": item, **item_story(item), "back": back}
    return render(request, "judging/item_detail.html", context)
