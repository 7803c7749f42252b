"""Teacher runs (Sensei Larry): writes (create, store answers, finish, cancel, resume) and the reads the pages show.

A run resolves the project's teacher (``teacher.teacher_config_for``) and records it, makes one ``TeacherWork``
row per chosen item (``larry_web.work``), and is worked through by ``distillation.tasks.teacher_chunk`` tasks on
the shared client loop (``larry_web.llm.window``). Each answer becomes a new ``Item``: the same prompt, context,
reference and task type as the item it answers (``answers``), the teacher's model as ``source_model``, its
reasoning apart. It then goes through the same gate as every item: once the run finishes the project is
re-gated (label functions run on the answers), and an answer is accepted only by SME ground truth or the gating
policy's judge (``judging.gate``); until a judge run covers it, it is pending, and pending items are never
exported. No database transaction is open during a teacher call.
"""

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Now
from django.utils import timezone

from annotations.models import Item, Project
from annotations.statistics import wilson_interval
from distillation.models import TeacherAnswer, TeacherRun, TeacherWork
from distillation.teacher import TeacherResult, teacher_config_for, teacher_connection_check
from judging.models import GateDecision
from judging.selectors import gating_policy
from judging.services import PolicyError, policy_runs_extend, regate_request
from larry_web import work

EXTERNAL_ID_MAX = 255
logger = logging.getLogger(__name__)


def originals(project: Project):
    """The project's items that are not a teacher's answers."""
    return Item.objects.filter(project=project, answers__isnull=True)


def chosen_items(project: Project, selection: str, item_ids: list[int] | None = None):
    """The items a run of ``selection`` answers (a queryset): ``rejected``, the originals with a response the gate
    rejected; ``all``, every original; ``missing``, prompts imported without a response that no teacher has
    answered yet; ``items``, the originals among ``item_ids``. Raises ValueError for another selection."""
    Selection = TeacherRun.Selection
    items = originals(project)
    if selection == Selection.REJECTED:
        return items.exclude(response="").filter(gate_decision__outcome=GateDecision.Outcome.REJECT)
    if selection == Selection.ALL:
        return items
    if selection == Selection.MISSING:
        return items.filter(response="", answered_by__isnull=True)
    if selection == Selection.ITEMS:
        return items.filter(pk__in=item_ids or [])
    raise ValueError(f"unknown selection {selection!r}: rejected, all, missing or items")


class TeacherRunBusy(ValueError):
    """What was asked of a run is being done by another (every chosen item is being answered by a queued or
    running run), or cannot be done in its state (resuming a run that runs, or a finished one with nothing to
    ask again). The message names the run(s)."""


def item_ids_check(project: Project, item_ids: list[int]) -> list[int]:
    """``item_ids`` sorted and once each, when every one is an original of ``project`` (an item a teacher may
    answer). Raises ValueError naming the others: unknown ids, another project's items, a teacher's answers."""
    ids = sorted(set(item_ids))
    found = set(originals(project).filter(pk__in=ids).values_list("pk", flat=True))
    if bad := [pk for pk in ids if pk not in found]:
        shown = ", ".join(map(str, bad[:20])) + (f" and {len(bad) - 20:,} more" if len(bad) > 20 else "")
        raise ValueError(
            f"item_ids {shown}: not items of project {project.slug} a teacher may answer (no such item, another "
            "project's, or a teacher's answer)"
        )
    return ids


def live_work(project: Project, *, exclude_run: TeacherRun | None = None):
    """The ``TeacherWork`` rows of the project's queued or running runs (but ``exclude_run``): items being
    answered now."""
    rows = TeacherWork.objects.filter(
        run__project=project, run__status__in=[TeacherRun.Status.QUEUED, TeacherRun.Status.RUNNING]
    )
    return rows.exclude(run=exclude_run) if exclude_run is not None else rows


def teacher_check(project: Project) -> tuple[str, list[str]]:
    """Check that the project's teacher answers before a run is started (``teacher.teacher_connection_check``),
    outside any transaction: ``(its base URL, the models it serves)``. Raises NoTeacher, TeacherUnreachable."""
    config = teacher_config_for(project)
    return config.base_url, teacher_connection_check(config)


@transaction.atomic  # the run and its work rows together
def teacher_run_create(
    *, project: Project, selection: str, user=None, item_ids: list[int] | None = None, judge: bool = False
) -> TeacherRun:
    """Create a teacher run over the chosen items (``chosen_items``) and enqueue it after commit.

    The run records its teacher (``TeacherConfig.snapshot``: URL, model, system prompt, temperature, max
    tokens, ask for reasoning, prices; never the key) and gets one ``TeacherWork`` row per item, in this
    transaction. With ``judge`` (``judge_answers``), the gating policy's judges judge its answers once it
    finishes (``teacher_run_judge``). Items a queued or running run of the project is answering are left out
    (a second click, a second worker of a script: every prompt is answered, and paid for, once); runs of a
    project are created one at a time (its row locked) so two at once cannot both miss the other. Raises
    ``teacher.NoTeacher`` when the project has no teacher, ValueError for an unknown selection or ``item_ids``
    that are not the project's originals (``item_ids_check``), TeacherRunBusy when every chosen item is being
    answered by another run.
    """
    config = teacher_config_for(project)
    Project.objects.select_for_update().filter(pk=project.pk).first()  # one run created at a time per project
    if selection == TeacherRun.Selection.ITEMS:
        item_ids = item_ids_check(project, item_ids or [])
    chosen = chosen_items(project, selection, item_ids)
    items = chosen.exclude(pk__in=live_work(project).values("item_id"))
    if not items.exists() and chosen.exists():
        busy = sorted(set(live_work(project).filter(item__in=chosen).values_list("run_id", flat=True)))
        raise TeacherRunBusy(
            f"every chosen item is being answered by teacher run {', '.join(map(str, busy))} (queued or running): "
            "wait for it, or cancel it first"
        )
    extra = {"item_ids": item_ids} if selection == TeacherRun.Selection.ITEMS else {}
    run = TeacherRun.objects.create(
        project=project,
        model=config.model,
        base_url=config.base_url,
        selection=selection,
        config={**config.snapshot(), **extra},
        judge_answers=judge,
        created_by=user,
    )
    logger.info(
        "teacher run %s of project %s by user %s: %s items (%s), judge the answers when done: %s",
        run.pk, project.slug, getattr(user, "pk", None), selection, len(extra.get("item_ids", [])) or "-", judge,
    )  # fmt: skip
    run.items_total = work.work_add(TeacherWork, run=run, items=items, done_model=TeacherAnswer)
    TeacherRun.objects.filter(pk=run.pk).update(items_total=run.items_total)
    from distillation.tasks import start_teacher_run

    transaction.on_commit(lambda: start_teacher_run.delay(run.pk))
    return run


ITEM_FIELDS = ("id", "prompt", "context")


def teacher_work_lease(*, run_id: int, worker: str, limit: int) -> tuple[list[Item], int]:
    """Lease up to ``limit`` of the run's work rows (``larry_web.work.work_lease``): ``(items with the fields a
    request needs, rows others hold)``; ``([], 0)`` means no work is left."""
    item_ids, others = work.work_lease(TeacherWork, TeacherRun, run_id=run_id, worker=worker, limit=limit)
    return list(Item.objects.filter(pk__in=item_ids).only(*ITEM_FIELDS).order_by("id")), others


def _answer_external_id(original: Item, run: TeacherRun, salt: str = "") -> str:
    """``<the original's external id>#teacher-<run>-<original's pk><salt>``, the original's part cut so the whole
    fits ``EXTERNAL_ID_MAX``: one answer per item in a run, so no two answers share an id however long or alike
    the originals' ids are; an item imported with that very id is met by ``_answer_create``'s salt."""
    suffix = f"#teacher-{run.pk}-{original.pk}{salt}"
    return original.external_id[: EXTERNAL_ID_MAX - len(suffix)] + suffix


def _answer_create(*, run: TeacherRun, original: Item, result: TeacherResult) -> Item | None:
    """The answer as a new Item, in a savepoint: when its external id is taken (an item imported with it), once
    more with a random salt; None (and ``result`` made a failure) if that too is taken, so a collision costs
    this answer, never the batch it is stored with."""
    for salt in ("", f"-{uuid.uuid4().hex[:12]}"):
        try:
            with transaction.atomic():
                return Item.objects.create(
                    project_id=run.project_id,
                    external_id=_answer_external_id(original, run, salt),
                    prompt=original.prompt,
                    context=original.context,
                    reference=original.reference,
                    task_type=original.task_type,
                    # Who wrote it: the model the server named (a proxy may route elsewhere), else the one asked.
                    source_model=result.answered_by or run.model,
                    response=result.response,
                    reasoning=result.reasoning,
                    answers=original,
                )
        except IntegrityError:
            continue
    result.error_class = TeacherAnswer.ErrorClass.INVALID_REPLY
    result.error = f"the answer could not be stored: the external id {_answer_external_id(original, run)!r} is taken"
    return None


def answers_store(*, run: TeacherRun, results: list[TeacherResult]) -> int:
    """Store results idempotently, in one transaction: an answered result becomes a new Item (``answers`` the
    original, ``source_model`` the model the reply named, else the run's; ``reasoning`` apart) and a
    ``TeacherAnswer`` linking both with its tokens, latency and exchanges; a failed one only a ``TeacherAnswer``
    with its class. Items that have an answer in the run already (a second worker's result) are skipped: the
    originals are locked (``SELECT ... FOR UPDATE``, in id order) and what is done read again under the lock, so
    two workers storing the same item at once store it once, and neither fails. The items' work rows are
    deleted and the run's counters moved on. Returns how many results were new."""
    results = [r.storable() for r in results]
    with transaction.atomic():
        done = set(
            TeacherAnswer.objects.filter(run=run, item_id__in=[r.item_id for r in results]).values_list(
                "item_id", flat=True
            )
        )
        fresh = {r.item_id: r for r in results if r.item_id not in done}
        originals_by_id = Item.objects.in_bulk(list(fresh))
        # Another worker may be storing some of these now (its lease ran out while it waited on the teacher):
        # the lock waits for it, and the second read sees what it stored.
        list(Item.objects.select_for_update().filter(pk__in=list(fresh)).order_by("pk").values_list("pk"))
        done = set(TeacherAnswer.objects.filter(run=run, item_id__in=list(fresh)).values_list("item_id", flat=True))
        rows = []
        for item_id, result in fresh.items():
            original = originals_by_id.get(item_id)
            if original is None or item_id in done:
                continue  # deleted meanwhile, or stored by another worker
            answer = _answer_create(run=run, original=original, result=result) if result.response else None
            rows.append(
                TeacherAnswer(
                    run=run,
                    item_id=item_id,
                    answer=answer,
                    error_class=result.error_class,
                    error=result.error,
                    finish_reason=result.finish_reason,
                    tokens_in=result.tokens_in,
                    tokens_out=result.tokens_out,
                    latency_ms=result.latency_ms,
                    attempts=result.attempts,
                    answered_by=result.answered_by,
                )
            )
        TeacherAnswer.objects.bulk_create(rows)
        TeacherWork.objects.filter(run=run, item_id__in=[r.item_id for r in results]).delete()
        written = sum(row.answer is not None for row in rows)
        TeacherRun.objects.filter(pk=run.pk).update(
            answers_written=F("answers_written") + written,
            answers_failed=F("answers_failed") + len(rows) - written,
            tokens_in=F("tokens_in") + sum(row.tokens_in or 0 for row in rows),
            tokens_out=F("tokens_out") + sum(row.tokens_out or 0 for row in rows),
            progress_at=Now(),
        )
    return len(rows)


def teacher_run_finish_if_complete(*, run_id: int) -> bool:
    """Mark the run finished once no work row is left (counters recounted from its answers), and ask for the
    project's re-gating, so label functions run on the answers and the gate decides them. A conditional UPDATE
    lets one of competing workers win; returns True for it."""
    counts = TeacherAnswer.objects.filter(run_id=run_id).aggregate(
        written=Count("id", filter=Q(answer__isnull=False)),
        failed=Count("id", filter=Q(answer__isnull=True)),
        tokens_in=Sum("tokens_in"),
        tokens_out=Sum("tokens_out"),
    )
    fields = {
        "answers_written": counts["written"],
        "answers_failed": counts["failed"],
        "tokens_in": counts["tokens_in"] or 0,
        "tokens_out": counts["tokens_out"] or 0,
    }
    if TeacherWork.objects.filter(run_id=run_id).exists():
        return False
    # One transaction, so no one reads the run as finished before the judge runs over its answers are
    # recorded (``run_teacher`` would report its answers as not judged).
    with transaction.atomic():
        won = TeacherRun.objects.filter(pk=run_id, status=TeacherRun.Status.RUNNING).update(
            status=TeacherRun.Status.FINISHED, finished_at=timezone.now(), **fields
        )
        if won:
            try:
                with transaction.atomic():  # a savepoint: whatever fails here, the run still finishes
                    teacher_run_judge(run_id=run_id)
            except Exception as exc:
                logger.exception("teacher run %s: starting the judge runs over its answers failed", run_id)
                note = f"starting the judge runs failed: {type(exc).__name__}: {exc}"[:2000]
                TeacherRun.objects.filter(pk=run_id).update(judge_note=note)
    if won:
        regate_request(TeacherRun.objects.values_list("project_id", flat=True).get(pk=run_id))
    return bool(won)


def teacher_run_judge(*, run_id: int) -> list:
    """When the run asked for it (``judge_answers``), have the gating policy in force judge the answers it wrote
    (``judging.services.policy_runs_extend``: a run per deciding tier, extending the tier's run, started by the
    teacher run's creator); label functions and the gate then run as after any judge run. The runs started go
    in ``judge_runs``; without a policy nothing is judged and ``judge_note`` says so. Returns the runs."""
    run = TeacherRun.objects.select_related("project", "created_by").get(pk=run_id)
    if not run.judge_answers:
        return []
    answers = list(Item.objects.filter(teacher_answer__run=run).values_list("id", flat=True))
    try:
        judge_runs = policy_runs_extend(project=run.project, item_ids=answers, user=run.created_by)
    except PolicyError as exc:
        TeacherRun.objects.filter(pk=run.pk).update(judge_note=str(exc))
        logger.info("teacher run %s: its answers were not judged: %s", run.pk, exc)
        return []
    run.judge_runs.add(*judge_runs)
    note = "" if judge_runs else "every answer had been judged already, or none was written"
    TeacherRun.objects.filter(pk=run.pk).update(judge_note=note)
    logger.info("teacher run %s: judge runs %s judge its %s answers", run.pk, [r.pk for r in judge_runs], len(answers))
    return judge_runs


def teacher_run_cancel(*, run: TeacherRun) -> bool:
    """Stop a queued or running run: workers start no new request and release what they hold. The answers
    written so far stay (and are gated). Returns False if it had ended."""
    cancelled = work.run_cancel(TeacherRun, run_id=run.pk)
    if cancelled:
        regate_request(run.project_id)
    return cancelled


def teacher_run_resume(*, run: TeacherRun, retry_failed: bool = False) -> None:
    """Go on with a cancelled or failed run: the items it has not answered yet; with ``retry_failed``, also
    those whose answer was not stored (a fault, a truncation, a refusal), which a finished run can be asked
    for too (as a judge run's errors are re-run). An item answered is never asked again in the run. Raises
    TeacherRunBusy while the run is queued or running (its row is locked, so of two resumes at once one does
    it), and for a finished run without ``retry_failed`` or with no answer to ask again."""
    from distillation.tasks import start_teacher_run

    Status = TeacherRun.Status
    with transaction.atomic():
        run = TeacherRun.objects.select_for_update().get(pk=run.pk)
        failed = TeacherAnswer.objects.filter(run=run, answer__isnull=True)
        if run.status in (Status.QUEUED, Status.RUNNING):
            raise TeacherRunBusy(f"teacher run {run.pk} is {run.status}")
        if run.status == Status.FINISHED and not retry_failed:
            raise TeacherRunBusy(
                f"teacher run {run.pk} is finished: resume with retry_failed to ask again for the answers not stored"
            )
        if run.status == Status.FINISHED and not failed.exists():
            raise TeacherRunBusy(f"teacher run {run.pk} is finished and every answer was stored: nothing to ask again")
        if retry_failed:
            failed_ids = list(failed.values_list("item_id", flat=True))
            failed.delete()
            work.work_add(TeacherWork, run=run, items=Item.objects.filter(pk__in=failed_ids), done_model=TeacherAnswer)
        TeacherRun.objects.filter(pk=run.pk).update(status=TeacherRun.Status.RUNNING, finished_at=None, error="")
        transaction.on_commit(lambda: start_teacher_run.delay(run.pk))


REVIVE_TASKS = 4


def teacher_run_revive_if_stalled(*, run_id: int) -> bool:
    """Queue a few ``teacher_chunk`` tasks again for a running run that has work rows left, none under a live
    lease, and no progress (a lease taken, an answer stored) for ``LARRY_JUDGE_LEASE_S``: its workers died or
    its tasks were lost. A conditional UPDATE of ``progress_at`` lets one of many callers win. True when this
    call revived it."""
    run = TeacherRun.objects.filter(pk=run_id, status=TeacherRun.Status.RUNNING).first()
    if run is None:
        return False
    rows = TeacherWork.objects.filter(run=run)
    if not rows.exists() or rows.filter(leased_until__gt=timezone.now()).exists():
        return False
    recent = timezone.now() - timezone.timedelta(seconds=settings.LARRY_JUDGE_LEASE_S)
    if (run.progress_at or run.started_at or run.created_at) > recent:
        return False
    if not TeacherRun.objects.filter(pk=run_id, progress_at=run.progress_at).update(progress_at=Now()):
        return False
    from distillation.tasks import teacher_chunk

    for _ in range(REVIVE_TASKS):
        teacher_chunk.delay(run_id)
    return True


def teacher_runs_revive_stalled() -> int:
    """``teacher_run_revive_if_stalled`` on every running teacher run; how many this call revived."""
    running = TeacherRun.objects.filter(status=TeacherRun.Status.RUNNING).values_list("id", flat=True)
    return sum(teacher_run_revive_if_stalled(run_id=run_id) for run_id in running)


def teacher_run_fail(*, run_id: int, error: str) -> None:
    """Mark a run failed with the reason; the answers it stored stay."""
    work.run_fail(TeacherRun, run_id=run_id, error=error)


# Reads.


def failures_by_class(run: TeacherRun) -> dict[str, int]:
    """``{error class label: count}`` of the run's answers not stored, most frequent first."""
    labels = dict(TeacherAnswer.ErrorClass.choices)
    counts = Counter(TeacherAnswer.objects.filter(run=run, answer__isnull=True).values_list("error_class", flat=True))
    return {labels.get(name, name): n for name, n in counts.most_common()}


def _acceptance(outcomes: list[str]) -> dict:
    decided = [o for o in outcomes if o in ("accept", "reject")]
    accepted = sum(o == "accept" for o in decided)
    interval = wilson_interval(accepted, len(decided))
    return {
        "n": len(decided),
        "accepted": accepted,
        "rate": accepted / len(decided) if decided else None,
        "low": interval[0] if interval else None,
        "high": interval[1] if interval else None,
    }


def teacher_run_report(run: TeacherRun) -> dict:
    """What the project page shows of a run: ``written``, ``accepted``, ``vetoed`` (an active rule rejected it),
    ``rejected`` (the gate rejected it, vetoes included), ``pending``, ``cost``, ``failures`` by class, and the
    acceptance rate of the teacher's answers next to the original responses' on the same prompts:
    ``teacher`` and ``originals``, each ``{"n": decided items, "accepted", "rate", "low", "high"}``, ``low`` and
    ``high`` the rate's 95 % Wilson score interval (``annotations.statistics.wilson_interval``; all three None
    when n is 0).
    Only prompts where both the answer and its original have been decided (accepted or rejected) count, so the
    two rates are over the same prompts; ``same_prompts`` is how many. ``answered_by``
    (``larry_web.work.answered_by``) and ``answered_by_other`` (whether a model other than the one asked for
    answered) say who wrote the answers."""
    answers = Item.objects.filter(teacher_answer__run=run)
    decisions = dict(GateDecision.objects.filter(item__in=answers).values_list("item_id", "outcome"))
    vetoed = GateDecision.objects.filter(item__in=answers, vetoed=True).count()
    pairs = list(answers.values_list("id", "answers_id"))
    original_outcome = dict(
        GateDecision.objects.filter(item_id__in=[o for _, o in pairs]).values_list("item_id", "outcome")
    )
    decided = ("accept", "reject")
    both = [(a, o) for a, o in pairs if decisions.get(a) in decided and original_outcome.get(o) in decided]
    outcomes = Counter(decisions.values())
    return {
        "written": run.answers_written,
        "accepted": outcomes["accept"],
        "rejected": outcomes["reject"],
        "vetoed": vetoed,
        "pending": len(pairs) - outcomes["accept"] - outcomes["reject"],
        "cost": run.cost,
        "failures": failures_by_class(run),
        "teacher": _acceptance([decisions[a] for a, _ in both]),
        "originals": _acceptance([original_outcome[o] for _, o in both]),
        "same_prompts": len(both),
        "answered_by": (by := work.answered_by(TeacherAnswer.objects.filter(run=run), run.model)),
        "answered_by_other": any(other for _name, _n, other in by),
    }


def teacher_judges_itself(project: Project, model: str, base_url: str) -> bool:
    """Whether a run of the project's gating policy was judged by the teacher: the same model at the same base
    URL (a trailing slash aside). Its answers are then judged by the model that wrote them, which the page says."""
    policy = gating_policy(project)
    same = (model, base_url.rstrip("/"))
    return bool(policy) and any(
        (tier.run.model, tier.run.base_url.rstrip("/")) == same for tier in policy.tiers.select_related("run")
    )


class TeacherRunTimeout(RuntimeError):
    """The run did not finish in time; it goes on (or waits for a worker) regardless."""


def teacher_and_wait(
    project: Project,
    selection: str,
    progress: Callable[[str], None],
    *,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    judge: bool = False,
) -> TeacherRun:
    """Start a teacher run and wait for it (in-process without a broker, else by polling its row), calling
    ``progress`` with a line at each poll; with ``judge``, also for the judge runs over its answers
    (``teacher_run_judge``) and the re-gating after them. Must be called outside a transaction. Raises
    NoTeacher, TeacherUnreachable (``teacher_check``, before anything is created), ValueError, TeacherRunTimeout
    after ``timeout_s`` seconds (None: wait for ever)."""
    from judging.models import JudgeRun
    from judging.selectors import regate_pending
    from judging.services import judge_run_revive_if_stalled

    teacher_check(project)  # a teacher that does not answer fails now, not as a run of timeouts
    run = teacher_run_create(project=project, selection=selection, judge=judge)
    started = time.monotonic()
    while True:
        teacher_run_revive_if_stalled(run_id=run.pk)  # a run whose workers died is queued again
        run.refresh_from_db()
        waited = time.monotonic() - started
        hint = " - is a Celery worker running?" if run.status == TeacherRun.Status.QUEUED and waited > 10 else ""
        progress(
            f"teaching: {run.items_done}/{run.items_total} items, {run.answers_written} answers written, "
            f"{run.answers_failed} not stored ({run.status}){hint}"
        )
        if run.finished:
            break
        if timeout_s is not None and waited > timeout_s:
            raise TeacherRunTimeout(f"teacher run {run.pk} is still {run.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)
    while judge:
        judge_runs = list(run.judge_runs.all())
        for judge_run in judge_runs:
            judge_run_revive_if_stalled(run_id=judge_run.pk)
        busy = [j for j in JudgeRun.objects.filter(pk__in=[j.pk for j in judge_runs]) if not j.finished_at]
        regating = regate_pending(project.pk)
        if not busy and not regating:
            break
        progress(
            "judging the answers: "
            + ", ".join(f"run {j.pk} {j.items_done + j.items_error}/{j.items_total} ({j.status})" for j in busy)
            + (" - re-gating" if regating and not busy else "")
        )
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TeacherRunTimeout(
                f"the judge runs over teacher run {run.pk}'s answers did not end in {timeout_s:.0f} s"
            )
        time.sleep(poll_s)
    return run
