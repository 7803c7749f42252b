"""The SME review queue: slots, leases, hand-out with SKIP LOCKED, skip.

A queued item has ``project.reviews_per_item`` slots. ``next_item`` hands an
SME a free slot: on PostgreSQL the candidate row is taken with
``SELECT ... FOR UPDATE SKIP LOCKED``, so two SMEs asking at the same moment
get different slots without waiting on each other; the lease is written in
the same short transaction. A lease expires after ``project.lease_minutes``
and the slot is free again. An SME never gets a second slot of an item they
hold, reviewed or skipped. (On SQLite, which has one writer at a time, the
same code is safe without the lock clause.)
"""

from django.db import transaction
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from annotations.models import Item, Project, Review, Skip, Slot

BATCH = 2000


def queue_add(*, project: Project, item_ids: list[int]) -> int:
    """Queue items for SME review: mark them queued and open their slots. Returns how many were newly queued."""
    added = 0
    with transaction.atomic():
        for start in range(0, len(item_ids), BATCH):
            chunk = item_ids[start : start + BATCH]
            added += Item.objects.filter(project=project, pk__in=chunk, in_sme_queue=False).update(in_sme_queue=True)
        slots_sync(project=project, item_ids=item_ids)
    return added


def slots_sync(*, project: Project, item_ids: list[int] | None = None) -> None:
    """Give every queued item ``reviews_per_item`` slots, with one done per existing review.

    Run after queueing items, importing labels, or changing ``reviews_per_item``
    (extra open slots are removed when it goes down; done ones are kept).
    """
    want = project.reviews_per_item
    items = Item.objects.filter(project=project, in_sme_queue=True)
    if item_ids is not None:
        items = items.filter(pk__in=item_ids)
    counts = items.annotate(
        n_slots=Count("slots", distinct=True),
        n_done=Count("slots", filter=Q(slots__done=True), distinct=True),
        n_reviews=Count("reviews", distinct=True),
    ).values_list("id", "priority", "n_slots", "n_done", "n_reviews")
    new_slots, to_close, to_trim = [], [], []
    for item_id, priority, n_slots, n_done, n_reviews in counts.iterator(chunk_size=BATCH):
        total = max(want, n_reviews)
        missing_done = max(min(n_reviews, total) - n_done, 0)
        for i in range(max(total - n_slots, 0)):
            done = i < missing_done
            new_slots.append(Slot(item_id=item_id, project=project, priority=priority, done=done))
        missing_done -= min(missing_done, max(total - n_slots, 0))
        if missing_done:
            to_close.append((item_id, missing_done))
        if n_slots > total:
            to_trim.append((item_id, n_slots - total))
    with transaction.atomic():
        Slot.objects.bulk_create(new_slots, batch_size=BATCH)
        for item_id, n in to_close:
            ids = Slot.objects.filter(item_id=item_id, done=False).order_by("leased_until").values_list("id", flat=True)
            Slot.objects.filter(pk__in=list(ids[:n])).update(done=True)
        for item_id, n in to_trim:
            ids = Slot.objects.filter(item_id=item_id, done=False, reviewer__isnull=True).values_list("id", flat=True)
            Slot.objects.filter(pk__in=list(ids[:n])).delete()


def next_item(*, project: Project, reviewer) -> Item | None:
    """The item this SME should review now, leased to them; None when the queue has nothing for them.

    An SME with a live lease gets that item again, the latest first (a reload
    does not lose it, and an undone item comes straight back); otherwise the
    highest-priority free slot of an item they have not held, reviewed or
    skipped.
    """
    now = timezone.now()
    with transaction.atomic():
        held = (
            Slot.objects.filter(project=project, reviewer=reviewer, done=False, leased_until__gt=now)
            .order_by("-leased_at", "-id")
            .first()
        )
        if held is not None:
            return Item.objects.get(pk=held.item_id)
        mine = Slot.objects.filter(item=OuterRef("item"), reviewer=reviewer).filter(
            Q(done=True) | Q(leased_until__gt=now)
        )
        reviewed = Review.objects.filter(item=OuterRef("item"), reviewer=reviewer)
        skipped = Skip.objects.filter(item=OuterRef("item"), reviewer=reviewer)
        slot = (
            Slot.objects.filter(project=project, done=False)
            .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
            .exclude(Exists(mine))
            .exclude(Exists(reviewed))
            .exclude(Exists(skipped))
            .order_by("-priority", "id")
            .select_for_update(skip_locked=True)
            .first()
        )
        if slot is None:
            return None
        Slot.objects.filter(pk=slot.pk).update(reviewer=reviewer, leased_at=now, leased_until=now + project.lease)
    return Item.objects.get(pk=slot.item_id)


def skip(*, item: Item, reviewer) -> None:
    """Pass on an item: release the SME's lease so others get it, and never offer it to this SME again."""
    with transaction.atomic():
        Skip.objects.get_or_create(item=item, reviewer=reviewer)
        Slot.objects.filter(item=item, reviewer=reviewer, done=False).update(
            reviewer=None, leased_at=None, leased_until=None
        )


def progress(*, project: Project, reviewer) -> dict[str, int]:
    """``{"done", "total", "mine"}``: done and all slots of the project, and this SME's reviews in it."""
    slots = Slot.objects.filter(project=project).aggregate(total=Count("id"), done=Count("id", filter=Q(done=True)))
    mine = Review.objects.filter(item__project=project, reviewer=reviewer).count()
    return {"done": slots["done"], "total": slots["total"], "mine": mine}
