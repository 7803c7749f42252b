"""Recorded sampling designs for the SME queue: which items SMEs label, and with what probability.

Every draw is a ``SampleDraw`` row; every drawn item a ``SampleMembership`` with its inclusion probability, so
an estimate can weight each SME label by its inverse (Horvitz & Thompson 1952). Designs:

- ``uniform``: a simple random sample of the items not yet drawn; pi = n / N.

Every design's frame (and N) is the items with a response: a prompt imported without one "needs a response" (a
teacher run may answer it) and has nothing for an SME to review.
- ``stratified`` by ``task_type`` or ``source_model``: a simple random sample in each stratum, sizes shared out
  proportionally to the strata (largest remainders) or equally (what a small stratum cannot take goes to the
  others); pi = n_h / N_h.
- ``confidence``: a uniform slice (``uniform_share`` of the size, at least one item) by simple random sampling,
  the rest by systematic probability-proportional-to-size sampling with size ``1 - certainty + floor``, where
  certainty is the gating policy's calibrated certainty max(p, 1 - p) on the item (0.5 when it has none).
  Each member's recorded probability is ``n_u / N + (1 - n_u / N) * pi_rest``, pi_rest being its PPS inclusion
  probability among the items the slice left (exact for the slice's own design; for the whole design a
  first-order approximation, as pi_rest depends on which items the slice took).
- ``audit``: a simple random sample of the currently accepted set (items the gate accepted, not yet queued),
  reviewed blind like any other item.

``annotations`` never imports ``judging``: the gating policy's certainty and the accepted set come from sources
``judging`` registers (``sampling_source_register``).
"""

import logging
import math
import random
from collections.abc import Callable
from functools import partial

import numpy as np
from django.db import connections, transaction
from django.db.models import Max, Min
from django.utils import timezone

from annotations.models import Project, SampleDraw, SampleMembership
from annotations.queue import queue_add
from larry_web import background
from larry_web.planner import analyze_after_bulk_write

Design, Allocation = SampleDraw.Design, SampleDraw.Allocation
STRATA_FIELDS = ("task_type", "source_model")
DEFAULT_UNIFORM_SHARE = 0.2
FLOOR = 0.05  # keeps items the policy is sure of drawable, so every item has pi > 0

logger = logging.getLogger(__name__)
_sources: dict[str, Callable] = {}


class SamplingError(ValueError):
    """A draw that cannot be made as asked; the message says what is wrong."""


def sampling_source_register(kind: str, source: Callable) -> None:
    """Register ``source(project)``: ``"certainty"`` returns ``{item_id: certainty in [0.5, 1]}``,
    ``"accepted"`` the ids of the items the gate accepts now. ``judging`` registers both."""
    if kind not in ("certainty", "accepted"):
        raise ValueError(f"unknown sampling source {kind!r}")
    _sources[kind] = source


def sample_draw(
    *,
    project: Project,
    size: int,
    design: str,
    seed: int,
    strata: str | None = None,
    allocation: str = Allocation.PROPORTIONAL,
    uniform_share: float = DEFAULT_UNIFORM_SHARE,
    user=None,
    later: bool = False,
) -> SampleDraw:
    """Draw ``size`` items by ``design`` with ``numpy``/``random`` seeded by ``seed``, record the draw and each
    item's inclusion probability, and queue the items for SMEs.

    The population is the project's items with a response that no earlier draw chose (for ``audit``: those of them
    the gate accepts), whether or not they wait in the SME queue (a prompt imported without a response "needs a
    response" and is in no draw's population, nor in the queue): items queued for other reasons (a certificate's
    held-back accepts, escalations, failed judgings) stay drawable, so successive uniform draws are together a
    simple random sample of the items (sampling without replacement, one draw after another). A stratified or
    confidence-weighted draw made before a uniform one leaves that uniform draw uniform over what remains only.
    Fewer than ``size`` are drawn when the population is smaller (``drawn`` says how many). The same items,
    design and seed give the same sample. Raises SamplingError: a size below 1, an unknown design,
    strata or allocation, strata given to a design other than stratified, a uniform share outside (0, 1].

    With ``later`` the draw is made in the background: the arguments are checked as above, the draw is recorded
    as ``queued`` and returned at once, and ``annotations.tasks.run_sample_draw`` makes it once the current
    transaction commits (a Celery worker, or without a broker the web process's background thread,
    ``larry_web.background``). Poll its ``status``: ``done`` (``drawn`` and ``population`` set, every item
    queued) or ``failed`` (``error`` says why; nothing of it recorded or queued).
    """
    draw = _draw_new(project, size, design, seed, strata, allocation, uniform_share, user)
    if later:
        from annotations.tasks import run_sample_draw  # tasks import this module

        draw.status = SampleDraw.Status.QUEUED
        draw.save()
        transaction.on_commit(partial(_start_draw, run_sample_draw, draw.pk))
        return draw
    with transaction.atomic():
        _draws_take_turns(project.pk)
        return _draw(draw)


def _start_draw(task, draw_id: int) -> None:
    """Hand the queued draw to a worker; when the broker cannot be reached, end it as failed and say so (nothing
    was drawn), rather than fail the request and leave the draw queued forever (as ``_start_import_job``)."""
    try:
        background.enqueue(task, draw_id)
    except background.BROKER_ERRORS as exc:
        SampleDraw.objects.filter(pk=draw_id, status=SampleDraw.Status.QUEUED).update(
            status=SampleDraw.Status.FAILED,
            error=f"not started: the task broker could not be reached ({exc}); nothing was drawn, draw again",
            finished_at=timezone.now(),
        )


def sample_draw_run(draw_id: int) -> SampleDraw | None:
    """Make the queued draw ``draw_id`` (what ``run_sample_draw`` runs); returns it, done or failed.

    Claimed with a conditional UPDATE, so one worker makes it; a draw found ``running`` is one whose worker died
    (its work was rolled back) and is made again from the start. The choice, the members and the queueing are
    one transaction, with the project locked as ``sample_draw`` does: any error rolls all of it back and marks
    the draw ``failed`` with the error (logged, not raised). Returns None for a draw already done, failed or
    deleted.
    """
    Status = SampleDraw.Status
    claimed = SampleDraw.objects.filter(pk=draw_id, status__in=[Status.QUEUED, Status.RUNNING])
    if not claimed.update(status=Status.RUNNING, started_at=timezone.now()):
        return None
    draw = SampleDraw.objects.select_related("project").get(pk=draw_id)
    try:
        with transaction.atomic():
            _draws_take_turns(draw.project_id)
            # A second run of the same draw (a redelivery, a second worker) claims it too, then waits here: once
            # the first has committed, the draw is done (or failed), and drawing it again would double it.
            if not SampleDraw.objects.filter(pk=draw_id, status=Status.RUNNING).exists():
                return None
            return _draw(draw)
    except Exception as exc:
        logger.exception("sample draw %s failed", draw_id)
        error = f"{type(exc).__name__}: {exc}"[:2000]
        SampleDraw.objects.filter(pk=draw_id).update(status=Status.FAILED, error=error, finished_at=timezone.now())
        draw.refresh_from_db()
        return draw


def _draws_take_turns(project_id: int) -> None:
    """Lock the project's row until the transaction ends, so draws of one project take turns and two at once
    never pick the same item.

    ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: a row inserted with a foreign key to the project (an imported item,
    a new draw, an import job, a judge run, a slot) takes ``FOR KEY SHARE`` on it, which ``FOR UPDATE`` blocks. A
    background draw of a million items holds the lock for minutes; with ``FOR UPDATE`` every import into the
    project waited for it, and so did the next ``POST .../samples/`` (recording its draw), answered 202 only
    once the running draw had ended. SQLite has one writer and no row locks: nothing to do there.
    """
    Project.objects.select_for_update(no_key=True).filter(pk=project_id).first()


def _draw_new(project, size, design, seed, strata, allocation, uniform_share, user) -> SampleDraw:
    """The unsaved draw the arguments ask for; raises SamplingError for what ``sample_draw`` refuses."""
    if not isinstance(size, int) or size < 1:
        raise SamplingError(f"size must be a whole number of items, at least 1; got {size!r}")
    if design not in Design.values:
        raise SamplingError(f"design must be one of {', '.join(Design.values)}; got {design!r}")
    if design == Design.STRATIFIED:
        if strata not in STRATA_FIELDS:
            raise SamplingError(f"a stratified draw needs strata: one of {', '.join(STRATA_FIELDS)}; got {strata!r}")
        if allocation not in Allocation.values:
            raise SamplingError(f"allocation must be one of {', '.join(Allocation.values)}; got {allocation!r}")
    elif strata:
        raise SamplingError(f"strata are for the stratified design only, not {design}")
    if design == Design.CONFIDENCE and not 0 < uniform_share <= 1:
        raise SamplingError(f"uniform_share must be in (0, 1]; got {uniform_share}")
    return SampleDraw(
        project=project,
        design=design,
        strata=strata or "",
        allocation=allocation if design == Design.STRATIFIED else "",
        uniform_share=uniform_share if design == Design.CONFIDENCE else None,
        seed=seed,
        size=size,
        created_by=user,
    )


def _draw(draw: SampleDraw) -> SampleDraw:
    """Choose ``draw``'s items, save it done, record its members and queue them (inside the caller's transaction,
    the project locked)."""
    project, size, design, seed = draw.project, draw.size, draw.design, draw.seed
    drawn_before = SampleMembership.objects.filter(draw__project=project).values("item_id")
    # A prompt without a response has nothing to review: it waits as "needs a response", in no draw's frame.
    frame = project.items.exclude(response="").exclude(pk__in=drawn_before)
    rows = list(frame.order_by("id").values_list("id", *STRATA_FIELDS))
    if design == Design.AUDIT:
        accepted = set(_source("accepted", project))
        rows = [row for row in rows if row[0] in accepted]
    ids = [row[0] for row in rows]
    n = min(size, len(ids))
    if design in (Design.UNIFORM, Design.AUDIT):
        # random.Random(seed).sample over ids in order: the same sample sample_for_review always drew. An audit is
        # uniform over the accepted set only, not over the items: not a uniform slice (the certificate's labels).
        uniform = design == Design.UNIFORM
        chosen = [(i, n / len(ids), uniform, "") for i in random.Random(seed).sample(ids, n)]
    elif design == Design.STRATIFIED:
        field = 1 + STRATA_FIELDS.index(draw.strata)
        chosen = _stratified(rows, field, n, draw.allocation, np.random.default_rng(seed))
    else:
        certainty = _source("certainty", project)
        chosen = _confidence(ids, certainty, n, draw.uniform_share, np.random.default_rng(seed))
    draw.drawn, draw.population = len(chosen), len(ids)
    draw.status, draw.error, draw.finished_at = SampleDraw.Status.DONE, "", timezone.now()
    draw.save()
    _members_insert(draw, chosen)
    analyze_after_bulk_write({SampleMembership._meta.db_table: len(chosen)})
    queue_add(project=project, item_ids=[c[0] for c in chosen])
    return draw


def _members_insert(draw: SampleDraw, chosen: list[tuple]) -> None:
    """Record ``chosen`` ``(item_id, inclusion_probability, uniform_slice, stratum)`` as members of ``draw``.

    On PostgreSQL one ``INSERT ... SELECT FROM unnest(...)`` per 50,000 members (a 50,000-row ``bulk_create``
    spent 1.9 s building and compiling model instances); elsewhere ``bulk_create``.
    """
    connection = connections[SampleMembership.objects.db]
    if connection.vendor != "postgresql":
        SampleMembership.objects.bulk_create(
            SampleMembership(draw=draw, item_id=i, inclusion_probability=p, uniform_slice=u, stratum=s[:200])
            for i, p, u, s in chosen
        )
        return
    table = SampleMembership._meta.db_table
    with connection.cursor() as cursor:
        for start in range(0, len(chosen), 50_000):
            ids, probabilities, slices, strata = zip(*chosen[start : start + 50_000], strict=True)
            cursor.execute(
                f"INSERT INTO {table} (draw_id, item_id, inclusion_probability, uniform_slice, stratum) "
                "SELECT %s, * FROM unnest(%s::bigint[], %s::double precision[], %s::boolean[], %s::text[])",
                [draw.pk, list(ids), list(probabilities), list(slices), [s[:200] for s in strata]],
            )


def _source(kind: str, project: Project):
    if kind not in _sources:
        raise SamplingError(f"no {kind} source is registered (the judging app registers it)")
    return _sources[kind](project)


def _stratified(rows, field: int, n: int, allocation: str, rng) -> list[tuple]:
    strata: dict[str, list[int]] = {}
    for row in rows:
        strata.setdefault(row[field] or "", []).append(row[0])
    names = sorted(strata)
    sizes = {h: len(strata[h]) for h in names}
    if allocation == Allocation.PROPORTIONAL:
        total = sum(sizes.values())
        quotas = {h: n * sizes[h] / total for h in names} if total else {}
        take = {h: math.floor(q) for h, q in quotas.items()}
        by_remainder = sorted(names, key=lambda h: (-(quotas[h] - take[h]), h))
        for h in by_remainder[: n - sum(take.values())]:
            take[h] += 1
    else:
        take, left, open_ = dict.fromkeys(names, 0), n, list(names)
        while left and open_:
            share = max(left // len(open_), 1)
            for h in list(open_):
                give = min(share, sizes[h] - take[h], left)
                take[h] += give
                left -= give
                if take[h] == sizes[h]:
                    open_.remove(h)
                if not left:
                    break
    chosen = []
    for h in names:
        if take[h]:
            picked = rng.choice(strata[h], size=take[h], replace=False)
            chosen += [(int(i), take[h] / sizes[h], False, h) for i in picked]
    return chosen


def pps_inclusion(weights: np.ndarray, n: int) -> np.ndarray:
    """Inclusion probabilities ``min(1, c * w_i)`` summing to ``n`` (items that would exceed 1 are taken for
    certain and the rest rescaled, repeatedly); ``weights`` positive, shape (N,), ``n <= N``."""
    pi = np.zeros(len(weights))
    certain = np.zeros(len(weights), dtype=bool)
    while True:
        left = n - certain.sum()
        w = np.where(certain, 0.0, weights)
        pi = np.where(certain, 1.0, left * w / w.sum() if w.sum() else 0.0)
        over = (pi > 1) & ~certain
        if not over.any():
            return np.clip(pi, 0.0, 1.0)
        certain |= over


def _systematic(pi: np.ndarray, rng) -> np.ndarray:
    """Systematic PPS in a random order (Madow 1949): item i is drawn with probability exactly ``pi[i]``."""
    order = rng.permutation(len(pi))
    edges = np.concatenate([[0.0], np.cumsum(pi[order])])
    points = rng.uniform() + np.arange(round(edges[-1]))
    hit = np.searchsorted(edges, points, side="right") - 1
    return order[np.unique(hit)]


def _confidence(ids: list[int], certainty: dict[int, float], n: int, uniform_share: float, rng) -> list[tuple]:
    if not ids:
        return []
    n_u = min(n, max(1, round(uniform_share * n)))
    p_u = n_u / len(ids)
    arr = np.array(ids)
    slice_ = set(rng.choice(arr, size=n_u, replace=False).tolist())
    rest = np.array([i for i in ids if i not in slice_])
    weights = np.array([1 - certainty.get(int(i), 0.5) + FLOOR for i in arr])
    rest_weights = weights[np.isin(arr, rest)]
    n_w = min(n - n_u, len(rest))
    pi_rest = pps_inclusion(rest_weights, n_w) if n_w else np.zeros(len(rest))
    picked = set(rest[_systematic(pi_rest, rng)].tolist()) if n_w else set()
    # An item of the slice gets the PPS probability it would have had among the rest, for the same formula.
    scale = n_w / rest_weights.sum() if n_w else 0.0
    pi_of = dict(zip(rest.tolist(), pi_rest.tolist(), strict=True))
    chosen = []
    for i, w in zip(ids, weights.tolist(), strict=True):
        if i in slice_ or i in picked:
            pr = pi_of.get(i, min(1.0, scale * w))
            chosen.append((i, float(min(1.0, p_u + (1 - p_u) * pr)), i in slice_, ""))
    return chosen


def draws_for(project: Project) -> list[SampleDraw]:
    """The project's draws, newest first, with who made them and the least and greatest inclusion probability of
    their members (``pi_min``, ``pi_max``; None for a draw that drew nothing)."""
    return list(
        SampleDraw.objects.filter(project=project)
        .select_related("created_by")
        .annotate(pi_min=Min("members__inclusion_probability"), pi_max=Max("members__inclusion_probability"))
        .order_by("-id")  # Meta.ordering is not applied to an aggregating query
    )


def memberships(project: Project) -> dict[int, tuple[float, bool]]:
    """``{item_id: (inclusion_probability, uniform_slice)}`` for the project's drawn items (an item drawn twice,
    which the designs avoid, keeps its first draw)."""
    rows = (
        SampleMembership.objects.filter(draw__project=project)
        .order_by("-draw_id")
        .values_list("item_id", "inclusion_probability", "uniform_slice")
    )
    return {item_id: (p, u) for item_id, p, u in rows}
