"""Celery tasks for judge runs. Tasks take ids, re-fetch, call services; all are idempotent.

``start_judge_run`` either judges everything with the local classifier or
queues ``judge_chunk`` tasks (one per ``LARRY_JUDGE_CHUNK_SIZE`` work rows) that
each lease the run's ``JudgeWork`` rows a batch at a time and keep up to the
endpoint's ``max_in_flight`` requests open (a sliding window: asyncio and
``AsyncOpenAI`` on the worker thread's long-lived ``backends.JudgeLoop``), paced
by the run's requests/tokens-per-minute limits when it has them, storing
verdicts as they arrive. Every task sends the system prompt and few-shot
examples recorded on the run.
No database transaction is open during a judge call.
"""

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, OperationalError
from django.utils import timezone

from annotations.models import Item, Project
from annotations.selectors import ground_truth
from judging import backends, prompts, services
from judging.models import JudgeRun, JudgeWork, Verdict
from larry_web import work


@shared_task(acks_late=True, reject_on_worker_lost=True)
def start_judge_run(run_id: int) -> None:
    """Start (or, when redelivered or resumed, go on with) a run."""
    JudgeRun.objects.filter(pk=run_id, status=JudgeRun.Status.QUEUED).update(
        status=JudgeRun.Status.RUNNING, started_at=timezone.now()
    )
    run = JudgeRun.objects.select_related("project").get(pk=run_id)
    if run.status != JudgeRun.Status.RUNNING:
        return
    if run.backend == JudgeRun.Backend.LOCAL:
        _judge_locally(run)
        return
    if run.config.get("scope") != "items":
        # A run over the whole project covers the items present now (more may have been imported since it was
        # created, or since a cancel).
        services.judge_work_add(run=run, items=Item.objects.filter(project=run.project).exclude(response=""))
    rows = JudgeWork.objects.filter(run=run).count()
    JudgeRun.objects.filter(pk=run.pk).update(
        items_total=rows + Verdict.objects.filter(run=run).count(), progress_at=timezone.now()
    )
    if not rows:
        services.judge_run_finish_if_complete(run_id=run.pk)
        return
    judge_run_enqueue(run, rows=rows)


# Enough tasks for every worker process to take part; a task that finds no work left ends at once.
MAX_TASKS_PER_RUN = 64


def judge_run_enqueue(run: JudgeRun, *, rows: int | None = None, most: int = MAX_TASKS_PER_RUN) -> int:
    """Queue ``judge_chunk`` tasks for the run's work rows: one per ``chunk_size`` rows, at most ``most``.
    Each task judges until no work is left (``judge_chunk``). Returns how many."""
    if rows is None:
        rows = JudgeWork.objects.filter(run=run).count()
    tasks = max(1, min(most, -(-rows // chunk_size(run))))
    for _ in range(tasks):
        judge_chunk.delay(run.pk)
    return tasks


def chunk_size(run: JudgeRun) -> int:
    """Items per chunk: ``LARRY_JUDGE_CHUNK_SIZE``, fewer when the run's requests-per-minute limit would not let
    that many be judged within most of a chunk's deadline (``LARRY_JUDGE_CHUNK_DEADLINE_S``)."""
    size = settings.LARRY_JUDGE_CHUNK_SIZE
    rpm = run.config.get("requests_per_minute")
    if rpm:
        size = min(size, max(1, int(rpm * settings.LARRY_JUDGE_CHUNK_DEADLINE_S / 60 * 0.8)))
    return size


def _judge_locally(run: JudgeRun) -> None:
    """The local classifier learns from every SME label of the project; only the run's scope is stored."""
    items = list(
        Item.objects.filter(project=run.project).exclude(response="").only("id", "prompt", "context", "response")
    )
    scope = set(run.config["item_ids"]) if run.config.get("scope") == "items" else None
    JudgeRun.objects.filter(pk=run.pk).update(
        items_total=len(items) if scope is None else sum(item.pk in scope for item in items)
    )
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
    if scope is not None:
        results = [result for result in results if result.item_id in scope]
    JudgeRun.objects.filter(pk=run.pk).update(config={**run.config, **info})
    services.verdicts_store(run=run, results=results)
    services.judge_run_finish_if_complete(run_id=run.pk)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def judge_chunk(run_id: int, item_ids: list[int] | None = None) -> None:
    """Judge the run's work rows until none is left, then maybe finish the run.

    Leases rows a batch at a time and keeps the endpoint's ``max_in_flight``
    requests open (``backends.judge_window``), storing verdicts as they come.
    The task starts no request after ``LARRY_JUDGE_CHUNK_DEADLINE_S``, gives
    the open ones ``LARRY_JUDGE_CHUNK_GRACE_S`` more (all well inside the
    task's time limits and the broker's visibility timeout), and queues
    itself again when work is left; what it leased and did not judge goes
    back at once. Should it have judged nothing at all by then, its items end
    as ``deadline`` errors instead (re-run them from the run page), so a judge
    that never answers cannot loop for ever. ``item_ids`` (from chunks queued
    before work rows existed) adds rows for those items not judged yet.
    A worker process killed mid-task (``reject_on_worker_lost``) has the task
    delivered again; its leases run out after ``LARRY_JUDGE_LEASE_S``.
    """
    run = JudgeRun.objects.select_related("project", "endpoint").get(pk=run_id)
    if run.status != JudgeRun.Status.RUNNING:
        return
    if item_ids:
        services.judge_work_add(run=run, items=Item.objects.filter(project=run.project, pk__in=item_ids))
    # No transaction is open here: leases, judge calls and writes are each their own.
    now = backends.judge_config_for(run.project, run.endpoint)  # the key is read now, never stored on the run
    try:  # and sent only to the URL it was set for: a run whose endpoint moved (or went) fails
        key = work.run_api_key(
            run_url=run.base_url, run_config=run.config, current_url=now.base_url, current_key=now.api_key, who="judge"
        )
    except work.EndpointMoved as exc:
        services.judge_run_fail(run_id=run.pk, error=str(exc))
        return
    config = backends.JudgeConfig(run.base_url, run.model, key)
    source = work.RunWork(
        JudgeWork, JudgeRun, run, work.worker_name(), lease=services.judge_work_lease, store=services.verdicts_store
    )
    outcome = backends.judge_loop().judge_window(
        config,
        source,
        prefix=_prompt_prefix(run),
        run_settings=run.config,
        max_in_flight=run.config.get("max_in_flight", now.max_in_flight),
        deadline_s=settings.LARRY_JUDGE_CHUNK_DEADLINE_S,
        grace_s=settings.LARRY_JUDGE_CHUNK_GRACE_S,
        renew_s=settings.LARRY_JUDGE_LEASE_S / 3,
    )
    work.chunk_end(
        JudgeWork,
        JudgeRun,
        run_id=run_id,
        outcome=outcome,
        again=lambda: judge_chunk.delay(run_id),
        finish=services.judge_run_finish_if_complete,
    )


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
