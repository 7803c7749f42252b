"""Reads for the annotations app: ground truth, the SME queue, counts."""

from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet

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


def agreement_report(project: Project) -> dict:
    """Agreement between the project's SMEs, on items with two or more SME reviews.

    Returns ``{"items", "reviewers", "cohen_kappa", "krippendorff_alpha",
    "per_sme": [{"reviewer", "reviews", "agreement"}], "disagreements"}``.
    Cohen's kappa (sklearn's ``cohen_kappa_score``) is given when exactly two
    SMEs reviewed the shared items; Krippendorff's alpha for nominal data
    (the ``krippendorff`` package; Krippendorff 2011, "Computing
    Krippendorff's alpha-reliability") for any number, with missing values
    where an SME did not review an item. ``agreement`` is the share of an
    SME's decisions on those items that match the ground truth (consensus or
    adjudication). Figures are None where undefined (fewer than two reviews
    of any item, or a single label throughout).
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
        "krippendorff_alpha": None,
        "per_sme": [],
        "disagreements": disagreements(project).count(),
    }
    if not shared:
        return report
    labels = {decision for votes in shared.values() for decision in votes.values()}
    if len(reviewers) == 2 and len(labels) > 1:
        a, b = reviewers
        pairs = [(v[a], v[b]) for v in shared.values() if a in v and b in v]
        if pairs:
            report["cohen_kappa"] = float(cohen_kappa_score([p[0] for p in pairs], [p[1] for p in pairs]))
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
    truth = ground_truth(shared, project=project)
    for r in reviewers:
        judged = [(votes[r], truth[i]) for i, votes in shared.items() if r in votes and i in truth]
        report["per_sme"].append(
            {
                "reviewer": names[r],
                "reviews": len(judged),
                "agreement": sum(mine == t for mine, t in judged) / len(judged) if judged else None,
            }
        )
    return report
