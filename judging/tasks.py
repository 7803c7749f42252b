"""Celery tasks for judge runs. Tasks take ids, re-fetch, call services; all are idempotent.

``start_judge_run`` either judges everything with the local classifier or
splits the run into chunks of ``LARRY_JUDGE_CHUNK_SIZE`` items, one
``judge_chunk`` task each; a chunk keeps up to the endpoint's
``max_in_flight`` requests open at once (asyncio and ``AsyncOpenAI`` on
the worker thread's long-lived ``backends.JudgeLoop``), paced by the run's
requests/tokens-per-minute limits when it has them. Every chunk sends the
system prompt and few-shot examples recorded on the run.
No database transaction is open during a judge call.
"""

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, OperationalError
from django.db.models import Exists, OuterRef
from django.utils import timezone

from annotations.models import Item, Project
from annotations.selectors import ground_truth
from judging import backends, prompts, services, training_sets
from judging.models import JudgeRun, TrainingSet, Verdict


@shared_task(acks_late=True)
def start_judge_run(run_id: int) -> None:
    """Start (or, when redelivered, resume) a run."""
    JudgeRun.objects.filter(pk=run_id, status=JudgeRun.Status.QUEUED).update(
        status=JudgeRun.Status.RUNNING, started_at=timezone.now()
    )
    run = JudgeRun.objects.select_related("project").get(pk=run_id)
    if run.status != JudgeRun.Status.RUNNING:
        return
    if run.backend == JudgeRun.Backend.LOCAL:
        _judge_locally(run)
        return
    # One statement, so one snapshot: the run covers the items present now (more may have been imported since
    # it was created, or since a cancel), and items_total counts exactly those, judged or not.
    judged = Verdict.objects.filter(run=run, item=OuterRef("pk"))
    items = Item.objects.filter(project=run.project).annotate(judged=Exists(judged)).order_by("id")
    rows = list(items.values_list("id", "judged"))
    JudgeRun.objects.filter(pk=run.pk).update(items_total=len(rows))
    todo = [item_id for item_id, done in rows if not done]
    if not todo:
        services.judge_run_finish_if_complete(run_id=run.pk)
        return
    size = chunk_size(run)
    for start in range(0, len(todo), size):
        judge_chunk.delay(run.pk, todo[start : start + size])


def chunk_size(run: JudgeRun) -> int:
    """Items per chunk: ``LARRY_JUDGE_CHUNK_SIZE``, fewer when the run's requests-per-minute limit would not let
    that many be judged within most of a chunk's deadline (``LARRY_JUDGE_CHUNK_DEADLINE_S``)."""
    size = settings.LARRY_JUDGE_CHUNK_SIZE
    rpm = run.config.get("requests_per_minute")
    if rpm:
        size = min(size, max(1, int(rpm * settings.LARRY_JUDGE_CHUNK_DEADLINE_S / 60 * 0.8)))
    return size


def _judge_locally(run: JudgeRun) -> None:
    items = list(Item.objects.filter(project=run.project).only("id", "prompt", "context", "response"))
    JudgeRun.objects.filter(pk=run.pk).update(items_total=len(items))  # the items present now
    teacher = None
    if run.config.get("learn_from_run"):
        verdicts = Verdict.objects.filter(run_id=run.config["learn_from_run"]).exclude(verdict="")
        teacher = dict(verdicts.values_list("item_id", "verdict"))
        if not teacher:
            services.judge_run_fail(
                run_id=run.pk, error=f"run {run.config['learn_from_run']} has no verdicts to learn from"
            )
            return
    try:
        results, info = backends.judge_with_local_classifier(
            items, ground_truth(project=run.project), seed=run.config.get("seed", 0), teacher=teacher
        )
    except backends.NotEnoughLabels as exc:
        services.judge_run_fail(run_id=run.pk, error=str(exc))
        return
    JudgeRun.objects.filter(pk=run.pk).update(config={**run.config, **info})
    services.verdicts_store(run=run, results=results)
    services.judge_run_finish_if_complete(run_id=run.pk)


@shared_task(acks_late=True)
def judge_chunk(run_id: int, item_ids: list[int]) -> None:
    """Judge the chunk's items that have no verdict in this run yet, then maybe finish the run.

    The chunk starts no request after ``LARRY_JUDGE_CHUNK_DEADLINE_S``, gives
    the open ones ``LARRY_JUDGE_CHUNK_GRACE_S`` more (all well inside the
    task's time limits and the broker's visibility timeout), stores what it
    judged, and queues the rest as a new chunk. Should it have judged nothing
    at all by then, the rest end as ``deadline`` errors instead (re-run them
    from the run page), so a judge that never answers cannot loop for ever.
    """
    run = JudgeRun.objects.select_related("project", "endpoint").get(pk=run_id)
    if run.status != JudgeRun.Status.RUNNING:
        return
    items = list(Item.objects.filter(pk__in=item_ids).exclude(verdicts__run=run))
    if items:
        # No transaction is open here: read, call the judge, then write.
        now = backends.judge_config_for(run.project, run.endpoint)  # the key is read now, never stored on the run
        config = backends.JudgeConfig(run.base_url, run.model, now.api_key)
        deadline = settings.LARRY_JUDGE_CHUNK_DEADLINE_S
        results = backends.judge_loop().judge_many(
            config,
            items,
            prefix=_prompt_prefix(run),
            run_settings=run.config,
            max_in_flight=run.config.get("max_in_flight", now.max_in_flight),
            deadline_s=deadline,
            grace_s=settings.LARRY_JUDGE_CHUNK_GRACE_S,
        )
        finished = {result.item_id for result in results}
        left = [item.pk for item in items if item.pk not in finished]
        if left and not results:
            error = f"deadline: no reply within the chunk's {deadline} s (LARRY_JUDGE_CHUNK_DEADLINE_S)"
            results = [
                backends.JudgeResult(
                    item_id,
                    error=error,
                    error_class=Verdict.ErrorClass.DEADLINE,
                    tokens_in=None,  # requests were sent and cancelled: what they cost is unknown
                    tokens_out=None,
                    attempts=[{"error": "deadline", "detail": "cancelled at the chunk's deadline"}],
                )
                for item_id in left
            ]
            left = []
        services.verdicts_store(run=run, results=results)
        if left:
            judge_chunk.delay(run_id, left)
            return
    services.judge_run_finish_if_complete(run_id=run_id)


def _prompt_prefix(run: JudgeRun) -> list[dict[str, str]]:
    """The system prompt and few-shot pairs recorded in the run's snapshot, so every chunk sends the same."""
    # Runs from before rubric versions recorded no prompt: the default rubric and today's guidelines.
    system = run.config.get("system_prompt") or prompts.system_prompt(prompts.DEFAULT_RUBRIC, run.project.guidelines)
    examples = run.config.get("few_shot_examples") or []
    items = Item.objects.in_bulk([e["item_id"] for e in examples])
    return prompts.prefix_messages(system, [(items[e["item_id"]], e) for e in examples if e["item_id"] in items])


# A re-gating that loses a race (an item deleted between reading it and storing its decision: a foreign-key
# violation; or a deadlock) is simply run again, a little later.
REGATE_RETRY = {
    "autoretry_for": (IntegrityError, OperationalError),
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 5,
}


@shared_task(acks_late=True, **REGATE_RETRY)
def regate_items(project_id: int, item_ids: list[int]) -> None:
    """Re-gate items whose SME ground truth changed (a decision, an undo, an edit, an adjudication)."""
    project = Project.objects.filter(pk=project_id).first()
    if project is not None:
        services.gate_apply(project=project, item_ids=item_ids)


@shared_task(acks_late=True, **REGATE_RETRY)
def regate_project(project_id: int, generation: int | None = None) -> None:
    """Re-run the project's label functions and re-gate every item (after a rule changed, or an import).

    ``generation`` is the request's (``services.regate_request``); when a later
    request exists, this one does nothing: the later task re-gates with newer data.
    """
    if generation is not None and services.regate_superseded(project_id, generation):
        return
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return
    try:
        services.project_regate(project=project)
    except Exception as exc:
        # Recorded for the project page (each failed attempt; the next success clears it), then retried or not.
        services.regate_finished(project_id=project_id, generation=generation, error=f"{type(exc).__name__}: {exc}")
        raise
    services.regate_finished(project_id=project_id, generation=generation)


@shared_task(bind=True, acks_late=True, max_retries=None)
def build_training_set(self, training_set_id: int) -> None:
    """Build a training-set snapshot (idempotent: a set no longer ``building`` is left alone).

    When another attempt holds the build (this is a second delivery while
    the first runs, or the first's worker died less than a lease ago), look
    again once its lease would run out: a live build will have renewed it or
    finished, a dead one's is then taken over. Without a broker (in-process
    tasks) there is no second delivery, so no retry either.
    """
    try:
        training_set = training_sets.training_set_build(training_set_id=training_set_id)
    except TrainingSet.DoesNotExist:
        return  # deleted before or while it was built
    if training_set.status == TrainingSet.Status.BUILDING and not self.request.is_eager:
        raise self.retry(countdown=training_sets.claim_seconds_left(training_set) + 1)
