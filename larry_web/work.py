"""Leased work rows: what a run (a judge run, a teacher run) still has to do, one row per item, shared by
competing workers.

A run creates one row per item of its scope; a worker leases rows (``work_lease``: ``SELECT ... FOR UPDATE
SKIP LOCKED``, then an UPDATE) for ``LARRY_JUDGE_LEASE_S`` seconds, renews the lease while it works on them
(``work_renew``, the heartbeat), and deletes each row in the transaction that stores the item's outcome, so
the rows left are the work left. Once a lease has run out (its worker died) another worker takes the row.
The models are ``LeasedWork`` subclasses with ``run`` and ``item`` foreign keys; the run model has
``progress_at`` and ``status``.
"""

import os
import socket
import uuid
from decimal import Decimal

from django.conf import settings
from django.db import connection, models, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.db.models.functions import Now
from django.utils import timezone

from larry_web import llm


class Run(models.Model):
    """A pass of an LLM over chosen items of a project (a judge run, a teacher run): its status and outcome, as
    every run keeps them on its row. Subclasses add ``project`` and what is theirs; ``config`` holds the
    prices the run started with (``larry_web.llm.cost``)."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"
        CANCELLED = "cancelled"

    config = models.JSONField(default=dict, blank=True, help_text="Everything that determines the output.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    items_total = models.PositiveIntegerField(default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    progress_at = models.DateTimeField(
        null=True, blank=True, help_text="When a worker last leased or stored this run's items (stall detection)."
    )

    class Meta:
        abstract = True
        ordering = ["-id"]

    @property
    def cost(self) -> Decimal:
        """Tokens in and out at the prices recorded when the run started (per million tokens)."""
        return llm.cost(self.config, self.tokens_in, self.tokens_out)


class LeasedWork(models.Model):
    """One item a run still has to do; subclasses add ``run`` and ``item`` foreign keys."""

    leased_by = models.CharField(max_length=100, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True


def work_add(work_model, *, run, items, done_model) -> int:
    """Add a ``work_model`` row for each of ``items`` (a queryset of Item) that has neither an outcome in the run
    (a ``done_model`` row with this ``run`` and ``item``) nor a row already; one INSERT ... SELECT. Returns how
    many rows the run has now."""
    done = done_model.objects.filter(run=run, item=OuterRef("pk"))
    queued = work_model.objects.filter(run=run, item=OuterRef("pk"))
    todo = items.filter(~Exists(done), ~Exists(queued))
    sql, params = todo.order_by().annotate(todo_id=F("pk")).values("todo_id").query.sql_with_params()
    table = work_model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (run_id, item_id, leased_by, attempts) "  # names from the model, values as parameters
            # "WHERE true": SQLite needs it to read ON CONFLICT as the upsert clause, not a join's ON.
            f"SELECT %s, todo.todo_id, '', 0 FROM ({sql}) AS todo WHERE true ON CONFLICT DO NOTHING",
            [run.pk, *params],
        )
    return work_model.objects.filter(run=run).count()


def lease_end():
    """When a lease taken now runs out: ``LARRY_JUDGE_LEASE_S`` from the database's clock."""
    return Now() + timezone.timedelta(seconds=settings.LARRY_JUDGE_LEASE_S)


def work_lease(work_model, run_model, *, run_id: int, worker: str, limit: int) -> tuple[list[int], int]:
    """Lease up to ``limit`` of the run's rows that no live lease holds, for ``LARRY_JUDGE_LEASE_S``.

    One short transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` (workers leasing at once take different rows,
    never wait for each other), then the UPDATE, and the run's ``progress_at``. Returns ``(item ids leased, in
    row order; number of rows others hold under a live lease)``: ``([], 0)`` means the run has no work left.
    """
    with transaction.atomic():
        free = Q(leased_until__isnull=True) | Q(leased_until__lte=Now())
        rows = work_model.objects.select_for_update(skip_locked=True).filter(free, run_id=run_id)
        picked = dict(rows.order_by("id").values_list("id", "item_id")[:limit])
        if picked:
            work_model.objects.filter(pk__in=list(picked)).update(
                leased_by=worker, leased_until=lease_end(), attempts=F("attempts") + 1
            )
            run_model.objects.filter(pk=run_id).update(progress_at=Now())
    others = 0 if picked else work_model.objects.filter(run_id=run_id).count()
    return list(picked.values()), others


def work_renew(work_model, run_model, *, run_id: int, worker: str, item_ids: list[int]) -> bool:
    """Extend ``worker``'s lease on ``item_ids`` (the heartbeat); False once the run no longer runs."""
    work_model.objects.filter(run_id=run_id, item_id__in=item_ids, leased_by=worker).update(leased_until=lease_end())
    return run_model.objects.filter(pk=run_id, status="running").exists()


def work_release(work_model, *, run_id: int, worker: str, item_ids: list[int]) -> None:
    """Give ``worker``'s leased rows for ``item_ids`` back, not done, for any worker to take at once."""
    work_model.objects.filter(run_id=run_id, item_id__in=item_ids, leased_by=worker).update(
        leased_by="", leased_until=None
    )


def run_cancel(run_model, *, run_id: int) -> bool:
    """Mark a queued or running run cancelled (workers then start no new request and release what they
    hold); False if it had ended."""
    Status = Run.Status
    return bool(
        run_model.objects.filter(pk=run_id, status__in=[Status.QUEUED, Status.RUNNING]).update(
            status=Status.CANCELLED, finished_at=timezone.now()
        )
    )


def run_fail(run_model, *, run_id: int, error: str) -> None:
    """Mark a run failed with the reason (cut to 5,000 characters); what it stored stays."""
    run_model.objects.filter(pk=run_id).update(status=Run.Status.FAILED, error=error[:5000], finished_at=timezone.now())


def answered_by(outcomes, asked: str) -> list[tuple[str, int, bool]]:
    """The models a run's server said answered, over ``outcomes`` (a queryset of its per-item rows with an
    ``answered_by`` column: verdicts, teacher answers): ``[(model, replies, other)]``, most first; ``other`` is
    True for a name other than ``asked`` (a proxy routing elsewhere, a server serving another model, a hosted
    model's dated version). Replies that named no model are counted under ``""``."""
    rows = outcomes.values_list("answered_by").annotate(n=models.Count("id")).order_by("-n")
    return [(name, n, bool(name) and name != asked) for name, n in rows]


class EndpointMoved(RuntimeError):
    """A run's server is no longer the one configured: the key configured now was set for another URL, and is
    never sent to the run's. The message names both URLs (never a key) and asks for a new run."""


def run_api_key(*, run_url: str, run_config: dict, current_url: str, current_key: str, who: str) -> str:
    """The API key a run's chunk may send to ``run_url``, the server the run recorded when it started (a key is
    never stored; ``run_config["api_key_set"]`` records whether one was sent).

    - The URL configured now is the run's (a trailing slash aside): the key configured now, set for that URL.
    - Another URL, and the run started without a key (``api_key_set`` False): none; it goes on as it started.
    - Another URL, and the run had a key (or, an older run, does not say): raises EndpointMoved, for the run
      to fail with its message. The key now configured is for the new URL; the old one's is gone.
    """
    if current_url.rstrip("/") == run_url.rstrip("/"):
        return current_key
    if run_config.get("api_key_set") is False:
        return ""
    raise EndpointMoved(
        f"the {who} moved from {run_url} (where this run started) to {current_url or 'nowhere'}, and the API key "
        f"configured now is for the new URL: it is not sent to the old one. Start a new run (it uses the {who} "
        "configured now)."
    )


def worker_name() -> str:
    """A name for one task's leases: host, process id and a random part (two tasks in a process differ)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RunWork(llm.WorkSource):
    """The work rows of one run, leased by one task (``worker``), for ``larry_web.llm.window``: ``lease`` and
    ``store`` are the run kind's (they read the items and write the outcomes), renewing and releasing are
    ``work_renew``/``work_release`` on ``work_model``/``run_model``."""

    def __init__(self, work_model, run_model, run, worker: str, *, lease, store) -> None:
        self.work_model, self.run_model, self.run, self.worker = work_model, run_model, run, worker
        self._lease, self._store = lease, store

    def lease(self, limit: int):
        return self._lease(run_id=self.run.pk, worker=self.worker, limit=limit)

    def renew(self, item_ids: list[int]) -> bool:
        return work_renew(self.work_model, self.run_model, run_id=self.run.pk, worker=self.worker, item_ids=item_ids)

    def release(self, item_ids: list[int]) -> None:
        work_release(self.work_model, run_id=self.run.pk, worker=self.worker, item_ids=item_ids)

    def store(self, results: list) -> None:
        self._store(run=self.run, results=results)


def chunk_end(work_model, run_model, *, run_id: int, outcome: "llm.WindowOutcome", again, finish) -> None:
    """What a chunk task does after its window: when it stopped at its deadline with work left in a run still
    running, ``again()`` (queue the task once more); otherwise ``finish(run_id=run_id)`` (the run's
    finish-if-complete, which finishes it when no work row is left)."""
    if (
        outcome.stopped_at_deadline
        and work_model.objects.filter(run_id=run_id).exists()
        and run_model.objects.filter(pk=run_id, status=Run.Status.RUNNING).exists()
    ):
        again()
        return
    finish(run_id=run_id)
