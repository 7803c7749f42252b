"""Reads for the annotations app: ground truth, the SME queue, counts."""

from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet

from annotations import statistics
from annotations.models import Adjudication, Decision, Item, Project, Review


def ground_truth(item_ids: Iterable[int] | None = None, *, project: Project | None = None) -> dict[int, str]:
    """The SME ground truth per item: ``{item_id: "accept" | "reject"}``.

    The rule, in this one place: a project lead's adjudication wins;
    otherwise the majority of the item's SME reviews (one review is a
    majority of one); a tie gives no ground truth (the item waits for
    adjudication and counts as not reviewed). Pass ``item_ids`` or ``project``.
    """
    reviews, adjudications = Review.objects.all(), Adjudication.objects.all()
    if project is not None:
        reviews = reviews.filter(item__project=project)
        adjudications = adjudications.filter(item__project=project)
    if item_ids is not None:
        reviews = reviews.filter(item_id__in=list(item_ids))
        adjudications = adjudications.filter(item_id__in=list(item_ids))
    counts = reviews.values("item_id").annotate(
        accepts=Count("id", filter=Q(decision=Decision.ACCEPT)),
        rejects=Count("id", filter=Q(decision=Decision.REJECT)),
    )
    truth = {}
    for row in counts:
        if row["accepts"] > row["rejects"]:
            truth[row["item_id"]] = Decision.ACCEPT.value
        elif row["rejects"] > row["accepts"]:
            truth[row["item_id"]] = Decision.REJECT.value
    truth.update(adjudications.values_list("item_id", "decision"))
    return truth


def projects_for(user) -> QuerySet[Project]:
    """Projects the user may see: all for staff, else those they are a member of."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user)


def disagreements(project: Project) -> QuerySet[Item]:
    """Items whose SME reviews disagree and that no lead has adjudicated yet."""
    return (
        Item.objects.filter(project=project, adjudication__isnull=True)
        .annotate(
            accepts=Count("reviews", filter=Q(reviews__decision=Decision.ACCEPT)),
            rejects=Count("reviews", filter=Q(reviews__decision=Decision.REJECT)),
        )
        .filter(accepts__gt=0, rejects__gt=0)
        .order_by("id")
    )


def disagreements_filtered(
    project: Project,
    *,
    reviewer: str = "",
    task_type: str = "",
    source_model: str = "",
    reject_reason: str = "",
    q: str = "",
) -> QuerySet[Item]:
    """``disagreements(project)`` narrowed for the adjudication page, in id order.

    ``reviewer``: a user name among the item's SME reviewers; ``task_type``,
    ``source_model``: exact values; ``reject_reason``: a reject reason one of its
    reviews gave; ``q``: text in the prompt or the response (case-insensitive
    substring). Empty strings do not filter; one with a NUL character matches
    nothing (PostgreSQL text never holds one, and cannot be compared with one).
    """
    items = disagreements(project)
    if any("\x00" in value for value in (reviewer, task_type, source_model, reject_reason, q)):
        return items.none()
    if reviewer:
        items = items.filter(pk__in=Review.objects.filter(reviewer__username=reviewer).values("item_id"))
    if task_type:
        items = items.filter(task_type=task_type)
    if source_model:
        items = items.filter(source_model=source_model)
    if reject_reason:
        items = items.filter(pk__in=Review.objects.filter(reason=reject_reason).values("item_id"))
    if q:
        items = items.filter(Q(prompt__icontains=q) | Q(response__icontains=q))
    return items


def disagreement_filter_choices(project: Project) -> dict[str, list[str]]:
    """The values the adjudication filters offer, from the open disagreements:
    ``{"reviewer", "task_type", "source_model", "reject_reason": [sorted values]}``."""
    items = disagreements(project).values("pk")
    reviews = Review.objects.filter(item__in=items)
    opened = Item.objects.filter(pk__in=items)

    def values(queryset, field: str) -> list[str]:
        return sorted({v for v in queryset.values_list(field, flat=True).distinct() if v})

    return {
        "reviewer": values(reviews, "reviewer__username"),
        "task_type": values(opened, "task_type"),
        "source_model": values(opened, "source_model"),
        "reject_reason": values(reviews, "reason"),
    }


def agreement_report(project: Project) -> dict:
    """Agreement between the project's SMEs, on items with two or more SME reviews.

    Returns ``{"items", "reviewers", "cohen_kappa", "cohen_kappa_n",
    "cohen_kappa_ci", "krippendorff_alpha", "krippendorff_alpha_ci",
    "per_sme": [{"reviewer", "reviews", "agreement", "ci"}], "disagreements",
    "small_n"}``. Cohen's kappa (sklearn's ``cohen_kappa_score``) is given
    when exactly two SMEs reviewed the shared items, on ``cohen_kappa_n``
    items both reviewed; Krippendorff's alpha for nominal data (the
    ``krippendorff`` package; Krippendorff 2011, "Computing Krippendorff's
    alpha-reliability") for any number, on ``items`` items, with missing
    values where an SME did not review an item. Each comes with a 95 %
    percentile bootstrap interval over items (2,000 resamples, seed 0;
    ``annotations.statistics``). ``agreement`` is the share of an SME's
    decisions on those items that match the ground truth (consensus or
    adjudication), with its 95 % Wilson interval ``ci`` (``scipy.stats``).
    Figures and intervals are None where undefined (fewer than two reviews
    of any item, or a single label throughout). ``small_n`` is
    ``statistics.SMALL_N``: below it the pages flag a figure as too few items
    to mean anything.
    """
    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    rows = list(
        Review.objects.filter(item__project=project, reviewer__isnull=False).values_list(
            "item_id", "reviewer_id", "reviewer__username", "decision"
        )
    )
    by_item: dict[int, dict[int, str]] = {}
    names: dict[int, str] = {}
    for item_id, reviewer_id, name, decision in rows:
        by_item.setdefault(item_id, {})[reviewer_id] = decision
        names[reviewer_id] = name
    shared = {item_id: votes for item_id, votes in by_item.items() if len(votes) >= 2}
    reviewers = sorted({r for votes in shared.values() for r in votes})
    report = {
        "items": len(shared),
        "reviewers": len(reviewers),
        "cohen_kappa": None,
        "cohen_kappa_n": 0,
        "cohen_kappa_ci": None,
        "krippendorff_alpha": None,
        "krippendorff_alpha_ci": None,
        "per_sme": [],
        "disagreements": disagreements(project).count(),
        "small_n": statistics.SMALL_N,
    }
    if not shared:
        return report
    labels = {decision for votes in shared.values() for decision in votes.values()}
    if len(reviewers) == 2:
        a, b = reviewers
        pairs = [(v[a], v[b]) for v in shared.values() if a in v and b in v]
        report["cohen_kappa_n"] = len(pairs)
        if pairs and len(labels) > 1:
            first, second = [p[0] for p in pairs], [p[1] for p in pairs]
            report["cohen_kappa"] = float(cohen_kappa_score(first, second))
            report["cohen_kappa_ci"] = statistics.cohen_kappa_bootstrap_ci(first, second)
    if len(labels) > 1:
        matrix = np.array(
            [
                [{"accept": 1.0, "reject": 0.0}[shared[i][r]] if r in shared[i] else np.nan for i in shared]
                for r in reviewers
            ]
        )
        report["krippendorff_alpha"] = float(
            krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
        )
        counts = [
            (sum(d == Decision.ACCEPT for d in votes.values()), sum(d == Decision.REJECT for d in votes.values()))
            for votes in shared.values()
        ]
        report["krippendorff_alpha_ci"] = statistics.krippendorff_alpha_bootstrap_ci(counts)
    truth = ground_truth(shared, project=project)
    for r in reviewers:
        judged = [(votes[r], truth[i]) for i, votes in shared.items() if r in votes and i in truth]
        agree = sum(mine == t for mine, t in judged)
        report["per_sme"].append(
            {
                "reviewer": names[r],
                "reviews": len(judged),
                "agreement": agree / len(judged) if judged else None,
                "ci": statistics.wilson_interval(agree, len(judged)),
            }
        )
    return report
