"""Writes for the annotations app: sampling into the SME queue and reviews."""

import random

from django.db import IntegrityError, transaction

from annotations.models import Decision, Item, Project, Review

REJECT_REASONS = ("inaccurate", "incomplete", "policy", "tone", "other")


class ReviewError(ValueError):
    """A review that cannot be stored; the message says why."""


def sample_for_review(*, project: Project, n: int | None = None, fraction: float | None = None, seed: int = 0) -> int:
    """Put a seeded random sample of the project's items into the SME queue.

    Give exactly one of ``n`` (a count) or ``fraction`` (0 < f <= 1 of all the
    project's items). Items already queued stay queued and count towards the
    target; the rest are drawn from the others with ``random.Random(seed)``,
    so the same items and seed give the same sample. Returns how many items
    were added. Raises ValueError on a bad size.
    """
    if (n is None) == (fraction is None):
        raise ValueError("give exactly one of n or fraction")
    total = project.items.count()
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        n = round(fraction * total)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    already = project.items.filter(in_sme_queue=True).count()
    candidates = list(project.items.filter(in_sme_queue=False).order_by("id").values_list("id", flat=True))
    chosen = random.Random(seed).sample(candidates, min(max(n - already, 0), len(candidates)))
    with transaction.atomic():
        for start in range(0, len(chosen), 5000):
            Item.objects.filter(id__in=chosen[start : start + 5000]).update(in_sme_queue=True)
    return len(chosen)


def review_submit(*, item: Item, reviewer, decision: str, reason: str = "") -> Review:
    """Store one SME's decision on an item.

    ``decision`` is ``"accept"`` or ``"reject"``; a reject needs a reason, an
    accept stores none (the review form always posts the select's reason).
    Raises ReviewError for a bad decision, a missing reason, or a second review
    of the same item by the same SME.
    """
    if decision not in Decision.values:
        raise ReviewError(f"decision must be accept or reject, got {decision!r}")
    reason = reason.strip() if decision == Decision.REJECT else ""
    if decision == Decision.REJECT and not reason:
        raise ReviewError("a reject needs a reason")
    try:
        with transaction.atomic():
            return Review.objects.create(item=item, reviewer=reviewer, decision=decision, reason=reason[:200])
    except IntegrityError:
        raise ReviewError(f"{reviewer} has already reviewed item {item.external_id}") from None


def prior_labels_import(*, project: Project, labels: dict[str, str]) -> int:
    """Store prior human labels as SME reviews with no reviewer: ``{external_id: "accept"|"reject"}``.

    Unknown external ids and items that already hold an imported label are
    skipped. Returns how many reviews were created. Raises ValueError for a
    label other than accept/reject.
    """
    bad = {ext: label for ext, label in labels.items() if label not in Decision.values}
    if bad:
        ext, label = next(iter(bad.items()))
        raise ValueError(f"label for {ext!r} must be accept or reject, got {label!r}")
    wanted = list(labels)
    imported = Review.objects.filter(item__project=project, reviewer__isnull=True)
    before = imported.count()
    with transaction.atomic():
        for start in range(0, len(wanted), 5000):
            ids = project.items.filter(external_id__in=wanted[start : start + 5000]).values_list("external_id", "id")
            Review.objects.bulk_create(
                [Review(item_id=pk, decision=labels[ext], origin=Review.Origin.IMPORT) for ext, pk in ids],
                ignore_conflicts=True,
            )
    return imported.count() - before
