"""The SME review queue: slots, leases, hand-out with SKIP LOCKED.

A queued item has ``project.reviews_per_item`` slots; having slots is what
"queued" means (``in_sme_queue``). ``next_item`` hands an
SME a free slot: on PostgreSQL the candidate row is taken with
``SELECT ... FOR UPDATE SKIP LOCKED``, so two SMEs asking at the same moment
get different slots without waiting on each other; the lease is written in
the same short transaction. A lease expires after ``project.lease_minutes``
and the slot is free again. An SME never gets a second slot of an item they
hold, reviewed or skipped, and holds at most one live lease per project: a
second request (a double click, another tab) gets the item already leased,
even when it arrives at the same instant (the SME's requests take turns, see
``serialise_leases``). (On SQLite, which has one writer at a time, the same
code is safe without the lock clause.)
"""

import json
import time
from datetime import datetime

from django.db import connections, transaction
from django.db.models import Count, Exists, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotations.models import Item, Project, Review, Slot
from larry_web.db import commit_without_waiting
from larry_web.planner import analyze_after_bulk_write

BATCH = 2000
# Key of the PostgreSQL advisory lock that makes queueings of one project take turns (with the project id).
QUEUE_LOCK = 0x1A770004


def in_sme_queue(item: str = "pk") -> Exists:
    """The condition "in the SME queue" for the item ``OuterRef(item)``: it has slots (done or open).

    Queue membership lives on the slots only, so queueing writes no item row (an item update touched every
    index of the row, the full-text one included). Use it in ``filter``/``exclude`` on items
    (``in_sme_queue()``) or on rows pointing at an item (``in_sme_queue("item_id")``), or annotate it. Served by the
    ``slot_by_item_reviewer`` index (item first).
    """
    return Exists(Slot.objects.filter(item_id=OuterRef(item)))


def queue_add(*, project: Project, item_ids: list[int]) -> int:
    """Queue items for SME review: open ``reviews_per_item`` slots for each not queued yet, one done per review
    it already has (an imported label). Returns how many were newly queued.

    A prompt without a response (it "needs a response") is never queued: an SME would have nothing to review.
    Items of other projects and ids that do not exist are ignored. One ``INSERT ... SELECT`` per ``BATCH``
    items (plus a Python pass for the rare item with more reviews than slots wanted). Queueings of one project
    take turns (a transaction-level advisory lock on PostgreSQL; SQLite has one writer): two at once would
    both find an item unqueued and both open its slots, since queueing writes no item row.
    """
    want = project.reviews_per_item
    added = 0
    order = list(dict.fromkeys(item_ids))  # the caller's order (a draw's random order), which the SMEs get
    fresh_ids: set[int] = set()
    over: set[int] = set()
    with transaction.atomic():
        connection = connections[Slot.objects.db]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [QUEUE_LOCK, project.pk])
        # What to open is looked up in id order: each chunk is then a run of neighbouring ids, whose index
        # entries and rows sit together (a random sample's ids spread every chunk over the whole table).
        ascending = sorted(order)
        for start in range(0, len(ascending), BATCH):
            chunk = ascending[start : start + BATCH]
            # The chunk's id range as well as its ids: PostgreSQL then reads the slot and review indexes over that
            # range only, and the ranges of successive chunks do not overlap. By the ids alone it scanned every
            # slot (or merged the slot index up to the chunk) for each chunk: quadratic, 11 s at 200,000 items.
            span = {"item_id__gte": chunk[0], "item_id__lte": chunk[-1], "item_id__in": chunk}
            queued = set(Slot.objects.filter(**span).values_list("item_id", flat=True))
            fresh = Item.objects.filter(project=project, pk__in=[i for i in chunk if i not in queued])
            fresh_ids.update(fresh.exclude(response="").values_list("pk", flat=True))
            # Items with more reviews than wanted slots get one more done slot per review (as slots_sync does).
            reviewed = Review.objects.filter(**span).order_by().values("item_id").annotate(n=Count("id"))
            over.update(r["item_id"] for r in reviewed.filter(n__gt=want))
        # The slots are opened in the caller's order, so SMEs who finish part of a draw have labelled a random
        # part of it (in id order they would have labelled the oldest items: a biased part).
        opening = [pk for pk in order if pk in fresh_ids]
        for start in range(0, len(opening), BATCH):
            chunk = opening[start : start + BATCH]
            added += _slots_open(want, chunk)
            if over.intersection(chunk):
                _slots_adjust(project, want, Item.objects.filter(pk__in=over.intersection(chunk)))
        # Fresh statistics for the slots just written: planned for the few slots it last knew of, the next item's
        # claim took 15 ms instead of 0.5 at 1,000,000 queued (a bitmap scan of every slot of the project).
        analyze_after_bulk_write({Slot._meta.db_table: added * want})
    return added


def slots_sync(*, project: Project, item_ids: list[int] | None = None) -> None:
    """Give every queued item (one with slots) ``max(reviews_per_item, reviews)`` slots, one done per review.

    Run after importing labels or changing ``reviews_per_item`` (extra open slots are removed when it goes
    down; done ones are kept, and a queued item always keeps one slot at least). ``queue_add`` queues items.
    """
    want = project.reviews_per_item
    chunks = [None] if item_ids is None else [item_ids[i : i + BATCH] for i in range(0, len(item_ids), BATCH)]
    with transaction.atomic():
        for chunk in chunks:
            items = Item.objects.filter(project=project).filter(in_sme_queue())
            if chunk is not None:
                items = items.filter(pk__in=chunk)
            _slots_adjust(project, want, items)


def _slots_open(want: int, ids: list[int]) -> int:
    """``want`` slots for each item of ``ids`` (none of which has slots), the first ``reviews`` of them done (an
    item with more reviews than ``want`` gets ``want`` done ones here), in one statement, numbered in the order of
    ``ids`` (the queue hands out slots of equal priority by number). Returns how many items."""
    if want < 1 or not ids:
        return 0
    items = _with_reviews(Item.objects.filter(pk__in=ids)).values_list("id", "project_id", "priority", "n_reviews")
    sql, params = items.query.sql_with_params()
    copies = " UNION ALL ".join(f"SELECT {n} AS n" for n in range(want))
    connection = connections[Slot.objects.db]
    if connection.vendor == "postgresql":
        positions, listed = "unnest(%s::bigint[]) WITH ORDINALITY AS o(id, pos)", list(ids)
    else:  # SQLite: json_each numbers the array's elements by key
        positions, listed = "(SELECT value AS id, key AS pos FROM json_each(%s)) o", json.dumps(ids)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Slot._meta.db_table} (item_id, project_id, priority, done) "
            f"SELECT i.id, i.project_id, i.priority, k.n < i.n_reviews FROM ({sql}) i JOIN {positions} ON o.id = i.id "
            f"CROSS JOIN ({copies}) k ORDER BY o.pos, k.n",
            [*params, listed],
        )
        return cursor.rowcount // want


def _with_reviews(items):
    """``items`` annotated with ``n_reviews``, how many reviews each has (a correlated count, no join)."""
    reviews = Review.objects.filter(item=OuterRef("pk")).order_by().values("item")
    return items.annotate(n_reviews=Coalesce(Subquery(reviews.annotate(n=Count("*")).values("n")), 0))


def _slots_adjust(project: Project, want: int, items) -> None:
    """Bring the slots of ``items`` (each with slots or reviews) to ``max(want, reviews)``, done ones first."""
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
    Slot.objects.bulk_create(new_slots, batch_size=BATCH)
    for item_id, n in to_close:
        ids = Slot.objects.filter(item_id=item_id, done=False).order_by("leased_until").values_list("id", flat=True)
        Slot.objects.filter(pk__in=list(ids[:n])).update(done=True)
    for item_id, n in to_trim:
        ids = Slot.objects.filter(item_id=item_id, done=False, reviewer__isnull=True).values_list("id", flat=True)
        Slot.objects.filter(pk__in=list(ids[:n])).delete()


def serialise_leases(*, project: Project, reviewer) -> None:
    """Wait, until the current transaction ends, for any other transaction changing this SME's leases here.

    Two requests of one SME at once (a double click, two tabs) would otherwise
    each see no live lease and each claim a slot, leaving other SMEs "nothing
    left" while the extra leases run. On PostgreSQL a transaction-level
    advisory lock keyed by (project, SME) makes them take turns; other SMEs
    never wait for it. SQLite needs nothing: its transactions are IMMEDIATE
    (see settings), so writers already take turns. Call it inside
    ``transaction.atomic()``.
    """
    connection = connections[Slot.objects.db]
    if connection.vendor == "postgresql":
        # Larry's other advisory locks use the two-int4 key space; this one-bigint key never meets them.
        # Ids past 2**31 may share a key with another pair: they then wait for each other, no more.
        key = ((project.pk & 0x7FFFFFFF) << 32) | (reviewer.pk & 0xFFFFFFFF)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


# Claim one free slot in one statement: the inner SELECT takes the first free
# slot in queue order that this SME may have, skipping rows other SMEs are
# claiming at this instant (FOR UPDATE SKIP LOCKED, where the database has it),
# and the UPDATE leases it. One round trip. It claims nothing while the SME
# holds a live lease in the project (evaluated once, not per row), which with
# serialise_leases keeps one live lease per SME.
_CLAIM = """
UPDATE annotations_slot SET reviewer_id = %s, leased_at = %s, leased_until = %s
WHERE id = (
    SELECT s.id FROM annotations_slot s
    WHERE s.project_id = %s AND NOT s.done AND (s.leased_until IS NULL OR s.leased_until <= %s)
      AND NOT EXISTS (SELECT 1 FROM annotations_slot l WHERE l.project_id = %s AND l.reviewer_id = %s
                      AND NOT l.done AND l.leased_until > %s)
      AND NOT EXISTS (SELECT 1 FROM annotations_slot m WHERE m.item_id = s.item_id AND m.reviewer_id = %s
                      AND (m.done OR m.leased_until > %s))
      AND NOT EXISTS (SELECT 1 FROM annotations_review r WHERE r.item_id = s.item_id AND r.reviewer_id = %s)
      AND NOT EXISTS (SELECT 1 FROM annotations_skip k WHERE k.item_id = s.item_id AND k.reviewer_id = %s)
    ORDER BY s.priority DESC, s.id
    LIMIT 1 {lock}
)
RETURNING item_id
"""


def _claim(project: Project, reviewer, now: datetime) -> tuple[int, datetime] | None:
    connection = connections[Slot.objects.db]
    lock = "FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    me = reviewer.pk
    params = [me, now, now + project.lease, project.pk, now, project.pk, me, now, me, now, me, me]
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM.format(lock=lock), params)
        row = cursor.fetchone()
    return None if row is None else (row[0], now)


def _live_lease(project: Project, reviewer, now: datetime) -> tuple[int, datetime] | None:
    return (
        Slot.objects.filter(project=project, reviewer=reviewer, done=False, leased_until__gt=now)
        .order_by("-leased_at", "-id")
        .values_list("item_id", "leased_at")
        .first()
    )


def next_item(*, project: Project, reviewer) -> Item | None:
    """The item this SME should review now, leased to them; None when the queue has nothing for them.

    An SME with a live lease gets that item again (a reload, a double click or
    another tab does not lose it or take a second one, and an undone item
    comes straight back); otherwise the highest-priority free slot of an item
    they have not held, reviewed or skipped. The item carries ``leased_at``
    (an aware datetime), when this SME's lease on it began; the review screen
    sends it back with the decision, so a late one can be told "your lease
    expired".
    """
    with transaction.atomic():
        commit_without_waiting(Slot.objects.db)  # a lease lost in a crash is handed out again
        serialise_leases(project=project, reviewer=reviewer)
        now = timezone.now()
        # Under READ COMMITTED a row changed by a concurrent claim can make the
        # inner SELECT come back empty although other slots are free: try again.
        for _ in range(3):
            lease = _claim(project, reviewer, now) or _live_lease(project, reviewer, now)
            if lease is not None or not _free_slots_exist(project, now):
                break
    if lease is None:
        return None
    item = Item.objects.get(pk=lease[0])
    item.leased_at = lease[1]
    return item


def _free_slots_exist(project: Project, now) -> bool:
    return (
        Slot.objects.filter(project=project, done=False)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lte=now))
        .exists()
    )


# Counting a project's slots reads them all: 65 ms at 200,000 slots (EXPLAIN ANALYZE, loaded machine), on every
# card an SME gets, where the rest of a decision and the next item take a few ms. A large queue's project-wide
# figures are therefore reused for a few seconds in this process (with 20 SMEs they move by a few reviews a
# second); the SME's own count, and a small queue's figures, are counted every time.
PROGRESS_REUSE_FROM_SLOTS = 20_000
PROGRESS_REUSE_S = 5.0
_project_progress: dict[int, tuple[float, dict[str, int]]] = {}


def progress(*, project: Project, reviewer) -> dict[str, int]:
    """``{"done", "total", "mine"}``: done and all slots of the project, and this SME's reviews in it.

    ``done`` and ``total`` of a project with at least ``PROGRESS_REUSE_FROM_SLOTS`` slots may be up to
    ``PROGRESS_REUSE_S`` seconds old (counted by this process at most that long ago); ``mine`` is exact.
    """
    now = time.monotonic()
    reused = _project_progress.get(project.pk)
    if reused is not None and now - reused[0] < PROGRESS_REUSE_S:
        slots = reused[1]
    else:
        slots = Slot.objects.filter(project=project).aggregate(total=Count("id"), done=Count("id", filter=Q(done=True)))
        if slots["total"] >= PROGRESS_REUSE_FROM_SLOTS:
            _project_progress[project.pk] = (now, slots)
        else:
            _project_progress.pop(project.pk, None)
    mine = Review.objects.filter(item__project=project, reviewer=reviewer).count()
    return {"done": slots["done"], "total": slots["total"], "mine": mine}
