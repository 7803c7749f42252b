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

from django.db import connections, transaction
from django.db.models import Count, Q
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


# Claim one free slot in one statement: the inner SELECT takes the first free
# slot in queue order that this SME may have, skipping rows other SMEs are
# claiming at this instant (FOR UPDATE SKIP LOCKED, where the database has it),
# and the UPDATE leases it. One round trip, one commit.
_CLAIM = """
UPDATE annotations_slot SET reviewer_id = %s, leased_at = %s, leased_until = %s
WHERE id = (
    SELECT s.id FROM annotations_slot s
    WHERE s.project_id = %s AND NOT s.done AND (s.leased_until IS NULL OR s.leased_until <= %s)
      AND NOT EXISTS (SELECT 1 FROM annotations_slot m WHERE m.item_id = s.item_id AND m.reviewer_id = %s
                      AND (m.done OR m.leased_until > %s))
      AND NOT EXISTS (SELECT 1 FROM annotations_review r WHERE r.item_id = s.item_id AND r.reviewer_id = %s)
      AND NOT EXISTS (SELECT 1 FROM annotations_skip k WHERE k.item_id = s.item_id AND k.reviewer_id = %s)
    ORDER BY s.priority DESC, s.id
    LIMIT 1 {lock}
)
RETURNING item_id
"""


def _claim(project: Project, reviewer, now) -> int | None:
    connection = connections[Slot.objects.db]
    lock = "FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    params = [reviewer.pk, now, now + project.lease, project.pk, now, reviewer.pk, now, reviewer.pk, reviewer.pk]
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM.format(lock=lock), params)
        row = cursor.fetchone()
    return row[0] if row else None


def next_item(*, project: Project, reviewer) -> Item | None:
    """The item this SME should review now, leased to them; None when the queue has nothing for them.

    An SME with a live lease gets that item again, the latest first (a reload
    does not lose it, and an undone item comes straight back); otherwise the
    highest-priority free slot of an item they have not held, reviewed or
    skipped.
    """
    now = timezone.now()
    item_id = (
        Slot.objects.filter(project=project, reviewer=reviewer, done=False, leased_until__gt=now)
        .order_by("-leased_at", "-id")
        .values_list("item_id", flat=True)
        .first()
    )
    if item_id is None:
        # Under READ COMMITTED a row changed by a concurrent claim can make the
        # inner SELECT come back empty although other slots are free: try again.
        for _ in range(3):
            item_id = _claim(project, reviewer, now)
            if item_id is not None or not _free_slots_exist(project, now):
                break
    return None if item_id is None else Item.objects.get(pk=item_id)


def _free_slots_exist(project: Project, now) -> bool:
    return (
        Slot.objects.filter(project=project, done=False)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .exists()
    )


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
