"""Writes for the annotations app: sampling into the SME queue, reviews and their history, adjudication."""

import random
from collections.abc import Callable
from functools import partial

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from annotations.models import Adjudication, Decision, ImportJob, Item, Project, Review, ReviewChange, Slot
from annotations.queue import queue_add, slots_sync

MAX_TEXT = 100_000

GroundTruthListener = Callable[[int, list[int]], None]
_ground_truth_listeners: list[GroundTruthListener] = []


def on_ground_truth_change(listener: GroundTruthListener) -> None:
    """Register ``listener(project_id, item_ids)``, called after commit when SME decisions on those items change.

    This is how ``judging`` re-gates items without ``annotations`` depending on it.
    """
    _ground_truth_listeners.append(listener)


def _ground_truth_changed(project_id: int, item_ids: list[int]) -> None:
    for listener in _ground_truth_listeners:
        transaction.on_commit(partial(listener, project_id, list(item_ids)))


ImportListener = Callable[[int], None]
_import_listeners: list[ImportListener] = []


def on_items_imported(listener: ImportListener) -> None:
    """Register ``listener(project_id)``, called after commit when an import stored new items in the project.

    ``judging`` re-runs the label functions and re-gates the project, so
    imported items and their prior labels count without anyone asking.
    """
    _import_listeners.append(listener)


def items_imported(project_id: int) -> None:
    """Tell the listeners (after commit) that an import stored new items in the project."""
    for listener in _import_listeners:
        transaction.on_commit(partial(listener, project_id))


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
    return queue_add(project=project, item_ids=chosen)


def _clean_decision(project: Project, decision: str, reason: str) -> str:
    """The reason to store; raises ReviewError for a bad decision or reject reason."""
    if decision not in Decision.values:
        raise ReviewError(f"decision must be accept or reject, got {decision!r}")
    if decision == Decision.ACCEPT:
        return ""  # the form always posts the select's reason
    reason = reason.strip()
    if not reason:
        raise ReviewError("a reject needs a reason")
    if project.reject_reasons and reason not in project.reject_reasons:
        raise ReviewError(f"reason must be one of {', '.join(project.reject_reasons)}, got {reason!r}")
    return reason


def review_submit(
    *, item: Item, reviewer, decision: str, reason: str = "", comment: str = "", corrected_response: str = ""
) -> Review:
    """Store one SME's decision on an item they hold (or one nobody else holds) and close its slot.

    ``decision`` is ``"accept"`` or ``"reject"``; a reject needs a reason from
    the project's list. The time from hand-out to decision is recorded.
    Raises ReviewError for a bad decision, an item outside the SME queue, an
    item whose lease went to another SME, or a second review by the same SME.
    """
    reason = _clean_decision(item.project, decision, reason)
    now = timezone.now()
    try:
        with transaction.atomic():
            slot = Slot.objects.select_for_update().filter(item=item, reviewer=reviewer, done=False).first()
            if slot is None:
                free = Q(reviewer__isnull=True) | Q(leased_until__lte=now)
                slot = Slot.objects.select_for_update().filter(item=item, done=False).filter(free).first()
            if slot is None:
                if not Slot.objects.filter(item=item).exists():
                    raise ReviewError(f"item {item.external_id} is not in the SME queue")
                raise ReviewError(
                    f"item {item.external_id} is no longer yours: your lease expired and another SME has it"
                )
            review = Review.objects.create(
                item=item,
                reviewer=reviewer,
                decision=decision,
                reason=reason[:200],
                comment=comment.strip()[:MAX_TEXT],
                corrected_response=corrected_response.strip()[:MAX_TEXT],
                seconds_spent=(now - slot.leased_at).total_seconds() if slot.leased_at else None,
            )
            Slot.objects.filter(pk=slot.pk).update(done=True, reviewer=reviewer, leased_until=None)
            ReviewChange.objects.create(
                item=item, reviewer=reviewer, action=ReviewChange.Action.CREATE, after=review.snapshot()
            )
            _ground_truth_changed(item.project_id, [item.pk])
            return review
    except IntegrityError:
        raise ReviewError(f"{reviewer} has already reviewed item {item.external_id}") from None


def review_undo(*, review: Review, reviewer) -> Item:
    """Take back a decision: the review goes (kept in history) and the item is leased back to the SME."""
    if review.reviewer_id != reviewer.pk:
        raise ReviewError("only the SME who made a decision can undo it")
    item, now = review.item, timezone.now()
    with transaction.atomic():
        ReviewChange.objects.create(
            item=item, reviewer=reviewer, action=ReviewChange.Action.UNDO, before=review.snapshot()
        )
        review.delete()
        Slot.objects.filter(item=item, reviewer=reviewer, done=True).update(
            done=False, leased_at=now, leased_until=now + item.project.lease
        )
        _ground_truth_changed(item.project_id, [item.pk])
    return item


def review_edit(
    *, review: Review, reviewer, decision: str, reason: str = "", comment: str = "", corrected_response: str = ""
) -> Review:
    """Change a past decision (the SME's own); the change is kept in history. Raises ReviewError."""
    if review.reviewer_id != reviewer.pk:
        raise ReviewError("only the SME who made a decision can edit it")
    reason = _clean_decision(review.item.project, decision, reason)
    before = review.snapshot()
    review.decision, review.reason = decision, reason[:200]
    review.comment, review.corrected_response = comment.strip()[:MAX_TEXT], corrected_response.strip()[:MAX_TEXT]
    if review.snapshot() == before:
        return review
    with transaction.atomic():
        review.save()
        ReviewChange.objects.create(
            item=review.item, reviewer=reviewer, action=ReviewChange.Action.EDIT, before=before, after=review.snapshot()
        )
        _ground_truth_changed(review.item.project_id, [review.item_id])
    return review


def adjudicate(*, item: Item, lead, decision: str, reason: str = "") -> Adjudication:
    """A project lead's decision on an item; it becomes the item's ground truth. Raises ReviewError."""
    if not item.project.is_lead(lead):
        raise ReviewError("only a project lead or staff can adjudicate")
    if decision not in Decision.values:
        raise ReviewError(f"decision must be accept or reject, got {decision!r}")
    with transaction.atomic():
        adjudication, _ = Adjudication.objects.update_or_create(
            item=item, defaults={"decision": decision, "reason": reason.strip()[:200], "decided_by": lead}
        )
        _ground_truth_changed(item.project_id, [item.pk])
    return adjudication


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
    labelled: list[int] = []
    with transaction.atomic():
        for start in range(0, len(wanted), 5000):
            ids = list(
                project.items.filter(external_id__in=wanted[start : start + 5000]).values_list("external_id", "id")
            )
            Review.objects.bulk_create(
                [Review(item_id=pk, decision=labels[ext], origin=Review.Origin.IMPORT) for ext, pk in ids],
                ignore_conflicts=True,
            )
            labelled += [pk for _, pk in ids]
        slots_sync(project=project)
        _ground_truth_changed(project.pk, labelled)
    return imported.count() - before


def import_job_create(
    *, project: Project, upload, fmt: str, import_labels: bool, user, label_field: str = "human_label"
) -> ImportJob:
    """Save an uploaded file as an ImportJob and enqueue its import after commit.

    ``upload`` is a Django ``UploadedFile``; ``fmt`` is ``"jsonl"``, ``"csv"``
    or ``""`` to detect it (``importers.sniff_format``: the file name, else the
    first non-blank byte). Raises ImportFormatError when the format cannot be
    told. Without a broker the import runs in-process before this returns.
    """
    from annotations.importers import sniff_format
    from annotations.tasks import run_import_job

    if not fmt:
        head = upload.read(4096)
        upload.seek(0)
        fmt = sniff_format(upload.name, head)
    job = ImportJob(
        project=project,
        filename=upload.name[:255],
        format=fmt,
        import_labels=import_labels,
        label_field=label_field,
        created_by=user,
        bytes_total=upload.size,
    )
    job.file.save(upload.name, upload, save=False)
    job.save()
    transaction.on_commit(lambda: run_import_job.delay(job.pk))
    return job
