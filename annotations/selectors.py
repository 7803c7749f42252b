"""Reads for the annotations app: ground truth, the SME queue, counts."""

from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet

from annotations.models import Decision, Item, Project, Review


def ground_truth(item_ids: Iterable[int] | None = None, *, project: Project | None = None) -> dict[int, str]:
    """The SME ground truth per item: ``{item_id: "accept" | "reject"}``.

    The rule, in this one place: the majority of an item's SME reviews; a tie
    gives no ground truth (the item is treated as not reviewed). With one
    review, that review is the ground truth. Pass ``item_ids`` or ``project``.
    """
    reviews = Review.objects.all()
    if project is not None:
        reviews = reviews.filter(item__project=project)
    if item_ids is not None:
        reviews = reviews.filter(item_id__in=list(item_ids))
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
    return truth


def projects_for(user) -> QuerySet[Project]:
    """Projects the user may see: all for staff, else those they are a member of."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(members=user)


def next_item_for_review(*, project: Project, reviewer) -> Item | None:
    """The next queued item nobody has reviewed yet, highest priority first, or None."""
    return (
        Item.objects.filter(project=project, in_sme_queue=True)
        .exclude(reviews__isnull=False)
        .order_by("-priority", "id")
        .first()
    )


def queue_progress(*, project: Project) -> dict[str, int]:
    """``{"queued": n, "reviewed": n}`` for the project's SME queue."""
    queued = Item.objects.filter(project=project, in_sme_queue=True)
    return {
        "queued": queued.count(),
        "reviewed": queued.filter(reviews__isnull=False).distinct().count(),
    }
