"""Writes for the annotations app: sampling into the SME queue, reviews and their history, adjudication."""

import os
from collections.abc import Callable
from datetime import datetime
from functools import partial

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from annotations.models import Adjudication, Decision, ImportJob, Item, Project, Review, ReviewChange, Skip, Slot
from annotations.queue import in_sme_queue, serialise_leases, slots_sync
from larry_web import background

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


class ReviewConflict(ReviewError):
    """A decision or skip on an item that is no longer the SME's; nothing was stored or changed.

    ``case`` says why, and the message says it to the SME:
    ``"decided"``: they already have a review of it (from another tab or window, or an earlier click);
    ``"skipped"``: they skipped it and another SME has it now;
    ``"expired"``: their lease ran out and another SME has it now;
    ``"taken"``: another SME has it, and nothing shows it was ever theirs.
    """

    CASES = ("decided", "skipped", "expired", "taken")

    def __init__(self, message: str, *, case: str):
        if case not in self.CASES:
            raise ValueError(f"case must be one of {', '.join(self.CASES)}, got {case!r}")
        super().__init__(message)
        self.case = case


def _conflict(item: Item, reviewer, *, leased_at: datetime | None, now: datetime, skipping: bool) -> ReviewConflict:
    """Why ``item`` is no longer this SME's, for a decision (or a skip) that arrives once it is not."""
    ext, lost = item.external_id, "nothing was skipped" if skipping else "this decision was not stored"
    mine = Review.objects.filter(item=item, reviewer=reviewer).first()
    if mine is not None:
        stored = mine.decision + (f": {mine.reason}" if mine.reason else "")
        return ReviewConflict(
            f"You already decided on {ext} ({stored}), in another tab or window or with an earlier click; that "
            f"decision stands and {lost}. To change it, edit it under My reviews.",
            case="decided",
        )
    if Skip.objects.filter(item=item, reviewer=reviewer).exists():
        return ReviewConflict(
            f"You skipped {ext} in another tab or window and another SME has it now; {lost}.", case="skipped"
        )
    # The review screen sends back when the lease it showed began; a lease that would have run out by now
    # was this SME's and expired. Without one (or with one still running) nothing shows the item was theirs.
    lease = item.project.lease
    if leased_at is not None and leased_at <= now - lease:
        minutes = round(lease.total_seconds() / 60)
        return ReviewConflict(
            f"Your lease on {ext} expired and another SME has it now (an item is yours for {minutes} minutes "
            f"once handed to you); {lost}.",
            case="expired",
        )
    return ReviewConflict(f"Another SME has {ext}; {lost}.", case="taken")


def sample_for_review(*, project: Project, n: int | None = None, fraction: float | None = None, seed: int = 0) -> int:
    """Put a seeded random sample of the project's items into the SME queue.

    Give exactly one of ``n`` (a count) or ``fraction`` (0 < f <= 1 of the
    project's items with a response: a prompt without one is never queued).
    Items already queued stay queued and count towards the target; the rest are
    drawn from the others with ``random.Random(seed)``, so the same items and
    seed give the same sample, and recorded as a uniform ``SampleDraw``
    (``annotations.sampling``). Returns how many items were added. Raises
    ValueError on a bad size.
    """
    if (n is None) == (fraction is None):
        raise ValueError("give exactly one of n or fraction")
    with_response = project.items.exclude(response="")  # a prompt without one has nothing to review
    total = with_response.count()
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        n = max(1, round(fraction * total)) if total else 0  # a small file still gets one SME item
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    from annotations.sampling import sample_draw

    already = with_response.filter(in_sme_queue()).count()
    if n - already <= 0 or not with_response.exclude(in_sme_queue()).exists():
        return 0
    return sample_draw(project=project, size=n - already, design="uniform", seed=seed).drawn


# The review screen's "other" reason: the form posts OTHER as the reason and the SME's words as
# ``reason_other``; it is stored as "other: <their words>", so reason counts group all of them under "other".
OTHER = "_other"
OTHER_PREFIX = "other: "


def review_reason_clean(*, project: Project, decision: str, reason: str, reason_other: str = "") -> str:
    """The reject reason to store for ``decision`` in ``project`` ("" for an accept).

    ``reason`` is one of the project's reasons, ``OTHER`` with the SME's own
    words in ``reason_other`` (stored as ``"other: <words>"``, at most 200
    characters), or such a stored ``"other: <words>"`` again (an edit).
    Raises ReviewError for a decision other than accept/reject, a reject
    without a reason, an "other" without words, or a reason outside the
    project's list.
    """
    if decision not in Decision.values:
        raise ReviewError(f"decision must be accept or reject, got {decision!r}")
    if decision == Decision.ACCEPT:
        return ""  # the form may post a reason the SME picked before accepting
    reason = reason.strip()
    if reason == OTHER:
        words = " ".join(reason_other.split())
        if not words:
            raise ReviewError('an "other" reject reason needs a few words saying what is wrong')
        return (OTHER_PREFIX + words)[:200]
    if not reason:
        keys = f"keys 1-{len(project.reject_reasons)}" if project.reject_reasons else "a key"
        raise ReviewError(f"a reject needs a reason: pick one ({keys}, or 0 for other)")
    if reason.startswith(OTHER_PREFIX) and reason[len(OTHER_PREFIX) :].strip():
        return reason[:200]
    if project.reject_reasons and reason not in project.reject_reasons:
        raise ReviewError(f"reason must be one of {', '.join(project.reject_reasons)}, got {reason!r}")
    return reason


def correction_clean(*, item: Item, corrected_response: str) -> str:
    """The corrected response to store: "" when it is the item's own response unchanged (the review screen's
    box starts with it), else the text, stripped, at most ``MAX_TEXT`` characters."""
    text = corrected_response.strip()
    return "" if text == item.response.strip() else text[:MAX_TEXT]


def _require_staff(user, permission: str) -> None:
    if not (user.is_staff and user.has_perm(permission)):
        raise ReviewError(f"only staff with the permission {permission} change another's decision")


def review_submit(
    *,
    item: Item,
    reviewer,
    decision: str,
    reason: str = "",
    reason_other: str = "",
    comment: str = "",
    corrected_response: str = "",
    leased_at: datetime | None = None,
) -> Review:
    """Store one SME's decision on an item they hold (or one nobody else holds) and close its slot.

    ``decision`` is ``"accept"`` or ``"reject"``; a reject needs a reason from
    the project's list, or ``OTHER`` with ``reason_other`` (``review_reason_clean``).
    A ``corrected_response`` equal to the item's response is stored as none.
    The time from hand-out to decision is recorded. A decision on a lease
    that expired is still stored while no other SME has taken the item.
    ``leased_at`` is when the lease the decision was made under began
    (``next_item``'s ``item.leased_at``, sent back by the review screen); it
    only tells "your lease expired" from "another SME has it".
    Raises ReviewConflict (a ReviewError; see its ``case``) when the item is
    no longer the SME's: they already decided it, skipped it, or another SME
    has it; ReviewError for a bad decision or an item outside the SME queue.
    Nothing is stored when it raises.
    """
    reason = review_reason_clean(project=item.project, decision=decision, reason=reason, reason_other=reason_other)
    corrected_response = correction_clean(item=item, corrected_response=corrected_response)
    now = timezone.now()
    try:
        with transaction.atomic():
            slot = Slot.objects.select_for_update().filter(item=item, reviewer=reviewer, done=False).first()
            if slot is None:
                if Review.objects.filter(item=item, reviewer=reviewer).exists():
                    raise _conflict(item, reviewer, leased_at=leased_at, now=now, skipping=False)
                free = Q(reviewer__isnull=True) | Q(leased_until__lte=now)
                slot = Slot.objects.select_for_update().filter(item=item, done=False).filter(free).first()
            if slot is None:
                if not Slot.objects.filter(item=item).exists():
                    raise ReviewError(f"item {item.external_id} is not in the SME queue")
                raise _conflict(item, reviewer, leased_at=leased_at, now=now, skipping=False)
            review = Review.objects.create(
                item=item,
                reviewer=reviewer,
                decision=decision,
                reason=reason[:200],
                comment=comment.strip()[:MAX_TEXT],
                corrected_response=corrected_response,
                seconds_spent=(now - slot.leased_at).total_seconds() if slot.leased_at else None,
            )
            Slot.objects.filter(pk=slot.pk).update(done=True, reviewer=reviewer, leased_until=None)
            ReviewChange.objects.create(
                item=item,
                reviewer=reviewer,
                changed_by=reviewer,
                action=ReviewChange.Action.CREATE,
                after=review.snapshot(),
            )
            _ground_truth_changed(item.project_id, [item.pk])
            return review
    except IntegrityError:
        # Another request of this SME stored a review of the item a moment ago (two tabs at once).
        if not Review.objects.filter(item=item, reviewer=reviewer).exists():
            raise
        raise _conflict(item, reviewer, leased_at=leased_at, now=now, skipping=False) from None


def review_skip(*, item: Item, reviewer, leased_at: datetime | None = None) -> None:
    """Pass on an item: release the SME's lease so others get it, and never offer it to this SME again.

    Skipping an item already skipped does nothing. ``leased_at`` is as for
    ``review_submit``. Raises ReviewConflict when the item is no longer the
    SME's (they decided it, or another SME has it); nothing changes then.
    """
    now = timezone.now()
    with transaction.atomic():
        mine = Slot.objects.select_for_update().filter(item=item, reviewer=reviewer, done=False)
        if not mine.exists():
            if Skip.objects.filter(item=item, reviewer=reviewer).exists():
                return
            free = Q(reviewer__isnull=True) | Q(leased_until__lte=now)
            others = Slot.objects.filter(item=item).exclude(reviewer=reviewer)
            decided = Review.objects.filter(item=item, reviewer=reviewer).exists()
            if decided or (others.exists() and not others.filter(done=False).filter(free).exists()):
                raise _conflict(item, reviewer, leased_at=leased_at, now=now, skipping=True)
        Skip.objects.get_or_create(item=item, reviewer=reviewer)
        mine.update(reviewer=None, leased_at=None, leased_until=None)


def review_undo(*, review: Review, reviewer) -> Item:
    """Take back a decision: the review goes (kept in history) and the item is leased back to the SME.

    The SME holds one live lease per project, so the lease on the item they
    were given next (if any) is released for others.
    """
    if review.reviewer_id != reviewer.pk:
        raise ReviewError("only the SME who made a decision can undo it")
    item = review.item
    with transaction.atomic():
        serialise_leases(project=item.project, reviewer=reviewer)
        now = timezone.now()
        ReviewChange.objects.create(
            item=item, reviewer=reviewer, changed_by=reviewer, action=ReviewChange.Action.UNDO, before=review.snapshot()
        )
        review.delete()
        Slot.objects.filter(project=item.project, reviewer=reviewer, done=False, leased_until__gt=now).update(
            reviewer=None, leased_at=None, leased_until=None
        )
        Slot.objects.filter(item=item, reviewer=reviewer, done=True).update(
            done=False, leased_at=now, leased_until=now + item.project.lease
        )
        _ground_truth_changed(item.project_id, [item.pk])
    return item


def review_edit(
    *,
    review: Review,
    reviewer,
    decision: str,
    reason: str = "",
    reason_other: str = "",
    comment: str = "",
    corrected_response: str = "",
) -> Review:
    """Change a past decision (the SME's own); the change is kept in history. Raises ReviewError.

    The arguments are as for ``review_submit``."""
    if review.reviewer_id != reviewer.pk:
        raise ReviewError("only the SME who made a decision can edit it")
    return _review_change(
        review=review,
        user=reviewer,
        decision=decision,
        reason=reason,
        reason_other=reason_other,
        comment=comment,
        corrected_response=corrected_response,
    )


def review_staff_edit(
    *, review: Review, staff, decision: str, reason: str = "", comment: str = "", corrected_response: str = ""
) -> Review:
    """Staff change someone's decision (an SME's review or an imported label), as the SME would on the review
    screen: same checks, same history, the item re-gated. The review stays the SME's; the history names
    ``staff`` as who changed it. Raises ReviewError (not staff with ``annotations.change_review``, bad decision).
    """
    _require_staff(staff, "annotations.change_review")
    return _review_change(
        review=review,
        user=staff,
        decision=decision,
        reason=reason,
        comment=comment,
        corrected_response=corrected_response,
    )


def _review_change(
    *, review: Review, user, decision: str, reason: str, comment: str, corrected_response: str, reason_other: str = ""
) -> Review:
    reason = review_reason_clean(
        project=review.item.project, decision=decision, reason=reason, reason_other=reason_other
    )
    corrected_response = correction_clean(item=review.item, corrected_response=corrected_response)
    with transaction.atomic():
        stored = Review.objects.select_for_update().filter(pk=review.pk).first()
        if stored is None:
            raise ReviewError(f"this decision on item {review.item.external_id} was taken back or deleted meanwhile")
        before = stored.snapshot()
        stored.decision, stored.reason = decision, reason[:200]
        stored.comment, stored.corrected_response = comment.strip()[:MAX_TEXT], corrected_response
        if stored.snapshot() == before:
            return stored
        stored.save()
        ReviewChange.objects.create(
            item_id=stored.item_id,
            reviewer_id=stored.reviewer_id,
            changed_by=user,
            action=ReviewChange.Action.EDIT,
            before=before,
            after=stored.snapshot(),
        )
        _ground_truth_changed(review.item.project_id, [stored.item_id])
    return stored


def review_staff_delete(*, review: Review, staff) -> Item:
    """Staff delete a decision (an SME's review or an imported label); kept in history as ``delete``.

    The item is re-gated, and a queued item's slot that the review had
    closed opens again, so another SME reviews it. Raises ReviewError (not
    staff with ``annotations.delete_review``, or the review is already gone).
    """
    _require_staff(staff, "annotations.delete_review")
    with transaction.atomic():
        stored = Review.objects.select_for_update().filter(pk=review.pk).select_related("item").first()
        if stored is None:
            raise ReviewError(f"this decision on item {review.item.external_id} was taken back or deleted meanwhile")
        ReviewChange.objects.create(
            item_id=stored.item_id,
            reviewer_id=stored.reviewer_id,
            changed_by=staff,
            action=ReviewChange.Action.DELETE,
            before=stored.snapshot(),
        )
        stored.delete()
        # The SME's own slot, or (an imported label) one that slots_sync closed for it.
        slot = Slot.objects.filter(item_id=stored.item_id, done=True, reviewer_id=stored.reviewer_id).first()
        if slot is not None:
            Slot.objects.filter(pk=slot.pk).update(done=False, reviewer=None, leased_at=None, leased_until=None)
        _ground_truth_changed(stored.item.project_id, [stored.item_id])
    return stored.item


def adjudicate(*, item: Item, lead, decision: str, reason: str = "") -> Adjudication:
    """A project lead's decision on an item; it becomes the item's ground truth, and is kept in history.

    A second call replaces the decision (history keeps both, as ``adjudicate``
    with before and after); the lead who decided last is ``decided_by``.
    Raises ReviewError (not a lead or staff, bad decision, a NUL character in the reason).
    """
    if not item.project.is_lead(lead):
        raise ReviewError("only a project lead or staff can adjudicate")
    if decision not in Decision.values:
        raise ReviewError(f"decision must be accept or reject, got {decision!r}")
    if "\x00" in reason:
        raise ReviewError("the reason contains a NUL character, which cannot be stored")
    with transaction.atomic():
        previous = Adjudication.objects.select_for_update().filter(item=item).first()
        adjudication, _ = Adjudication.objects.update_or_create(
            item=item, defaults={"decision": decision, "reason": reason.strip()[:200], "decided_by": lead}
        )
        before = previous.snapshot() if previous else {}
        if adjudication.snapshot() != before:
            ReviewChange.objects.create(
                item=item,
                reviewer=lead,
                changed_by=lead,
                action=ReviewChange.Action.ADJUDICATE,
                before=before,
                after=adjudication.snapshot(),
            )
        _ground_truth_changed(item.project_id, [item.pk])
    return adjudication


def adjudication_delete(*, adjudication: Adjudication, user) -> Item:
    """Withdraw an adjudication (a lead or staff): the SMEs' reviews are the item's ground truth again.

    Kept in history as ``unadjudicate``; the item is re-gated and, when its
    SMEs disagree, it is back on the adjudication page. Raises ReviewError.
    """
    item = adjudication.item
    if not item.project.is_lead(user):
        raise ReviewError("only a project lead or staff can withdraw an adjudication")
    with transaction.atomic():
        stored = Adjudication.objects.select_for_update().filter(pk=adjudication.pk).first()
        if stored is None:
            raise ReviewError(f"the adjudication of item {item.external_id} was deleted meanwhile")
        ReviewChange.objects.create(
            item=item, reviewer=user, changed_by=user, action=ReviewChange.Action.UNADJUDICATE, before=stored.snapshot()
        )
        stored.delete()
        _ground_truth_changed(item.project_id, [item.pk])
    return item


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
    told. An upload Django kept in a temporary file (over 2.5 MB) is moved
    into the media folder, not copied (``larry_web.uploads``).
    With a broker a worker runs the import; without one, a web process runs
    it on its background thread after the response (``larry_web.background``),
    and elsewhere (commands, tests) in-process before this returns.
    """
    from annotations.importers import sniff_format

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
    job.file.save(_stored_name(upload.name), upload, save=False)
    job.save()
    transaction.on_commit(partial(_start_import_job, job.pk))
    return job


STORED_NAME_BYTES = 200


def _stored_name(name: str) -> str:
    """``name`` cut to at most ``STORED_NAME_BYTES`` bytes of UTF-8, its extension kept when short, to store the
    upload under: file systems allow 255 bytes a name and Django keeps 255 characters of an upload's name (a
    name of 200 accented letters is 400 bytes: storing it failed with "File name too long", a 500), and the
    storage may add 8 more (``_`` and 7 random characters) when the name is taken. The job keeps the whole name
    in ``filename``."""
    if len(name.encode()) <= STORED_NAME_BYTES:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode()) > 16:
        stem, ext = name, ""
    room = STORED_NAME_BYTES - len(ext.encode())
    return (stem.encode()[:room].decode(errors="ignore") or "upload") + ext


def _start_import_job(job_id: int) -> None:
    """Hand the job to a worker; when the broker cannot be reached, end it as failed and say so (the upload
    is kept on the job; nothing was imported), rather than leave it queued forever or fail the request."""
    from annotations.tasks import run_import_job

    try:
        background.enqueue(run_import_job, job_id)
    except background.BROKER_ERRORS as exc:
        ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.QUEUED).update(
            status=ImportJob.Status.FAILED,
            error=f"not started: the task broker could not be reached ({exc}); nothing was imported, upload the "
            "file again",
            finished_at=timezone.now(),
        )
