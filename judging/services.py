"""Writes for the judging app: judge runs, label-function hits, the gate's decisions."""

from collections import defaultdict
from collections.abc import Iterator

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Sum
from django.db.models.functions import Now
from django.utils import timezone

from annotations.models import Item, Project
from annotations.queue import queue_add
from annotations.selectors import ground_truth
from judging import backends, gate, prompts
from judging.backends import JudgeResult
from judging.label_functions import Rule, RuleSet, validate_params
from judging.models import (
    GateDecision,
    JudgeRun,
    JudgeSettings,
    JudgeWork,
    LabelFunction,
    LabelFunctionVersion,
    RegateRequest,
    RubricVersion,
    RuleHit,
    Verdict,
)
from judging.selectors import few_shot_examples, latest_finished_run, run_stalled_since

WRITE_BATCH = 2000
# Keys of PostgreSQL advisory locks (first of two int4 keys; the second is the project id).
RULE_HITS_LOCK, GATE_LOCK = 0x1A770001, 0x1A770002


def _serialise(project: Project, key: int) -> None:
    """Wait, until the current transaction ends, for any other transaction holding ``(key, project)``.

    Rule hits and gate decisions are replaced as a whole (delete, then
    insert); two such writes at once would both insert the same rows and one
    would fail on a unique constraint. A PostgreSQL transaction-level advisory
    lock queues them instead; on other databases this does nothing.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [key, project.pk])


@transaction.atomic
def judge_settings_save(*, judge_settings: JudgeSettings, user=None) -> JudgeSettings:
    """Validate and save a project's judge settings; a new or changed rubric becomes a new RubricVersion.

    Line endings in the rubric are normalised to ``\\n``, so the same text
    always hashes the same. Versions are numbered 1, 2, ... per project and
    never change; a save that leaves the rubric as it is keeps the version.
    Raises django.core.exceptions.ValidationError for bad values (see the
    model's validators).
    """
    judge_settings.rubric = judge_settings.rubric.replace("\r\n", "\n").strip()
    judge_settings.full_clean()
    latest = None
    if judge_settings.pk:
        JudgeSettings.objects.select_for_update().filter(pk=judge_settings.pk).first()  # one editor at a time
        latest = judge_settings.versions.first()
    if latest and latest.rubric == judge_settings.rubric:
        judge_settings.rubric_version = latest.version
        judge_settings.save()
        return judge_settings
    judge_settings.rubric_version = (latest.version if latest else 0) + 1
    judge_settings.save()
    RubricVersion.objects.create(
        judge_settings=judge_settings,
        version=judge_settings.rubric_version,
        rubric=judge_settings.rubric,
        sha256=prompts.sha256(judge_settings.rubric),
        changed_by=user,
    )
    return judge_settings


def judge_settings_for(project: Project) -> JudgeSettings:
    """The project's judge settings; on first use, the defaults are saved as rubric version 1."""
    found = JudgeSettings.objects.filter(project=project).first()
    if found is not None:
        return found
    try:
        with transaction.atomic():
            return judge_settings_save(judge_settings=JudgeSettings(project=project))
    except (ValidationError, IntegrityError):
        # Another process created them a moment ago (the one-to-one's uniqueness).
        return JudgeSettings.objects.get(project=project)


def judge_endpoint_check(*, project: Project) -> None:
    """Check that the project's judge endpoint answers (``backends.judge_connection_check``), before a run
    is started: raises ``backends.JudgeUnreachable`` with a message naming the URL and the fault."""
    backends.judge_connection_check(backends.judge_config_for(project))


def judge_run_create(*, project: Project, user=None, item_ids: list[int] | None = None) -> JudgeRun:
    """Create a run over the project's items (all, or only ``item_ids``) and enqueue it after commit.

    The run records which judge it is (resolved from the project and the
    environment now, so later setting changes do not alter it) and, for an
    LLM judge, the snapshot of what determines its output (``backends.run_config``):
    the rubric version and the exact system prompt, and the few-shot examples
    pinned by staff or drawn now from SME ground truth (``selectors.few_shot_examples``).
    Its scope is ``item_ids`` (ids of other projects' items are ignored), or,
    with None, every item of the project present when the run starts;
    ``items_total`` counts the scope. An LLM run gets one ``JudgeWork`` row per
    item of its scope, in this transaction.
    """
    config = backends.judge_config_for(project)
    scope = project.items.all() if item_ids is None else project.items.filter(pk__in=item_ids)
    scoped = {} if item_ids is None else {"scope": "items"}
    if config.is_local:
        run = JudgeRun.objects.create(
            project=project,
            backend=JudgeRun.Backend.LOCAL,
            model=backends.LOCAL_MODEL_NAME,
            config={"seed": 0, **scoped, **({"item_ids": sorted(set(item_ids))} if scoped else {})},
            items_total=scope.count(),
            created_by=user,
        )
    else:
        judge_settings = judge_settings_for(project)
        run = JudgeRun.objects.create(
            project=project,
            backend=JudgeRun.Backend.OPENAI,
            model=config.model,
            base_url=config.base_url,
            config={
                **backends.run_config(
                    config,
                    system_prompt=prompts.system_prompt(judge_settings.rubric, project.guidelines),
                    rubric_version=judge_settings.rubric_version,
                    few_shot=few_shot_examples(
                        project,
                        count=judge_settings.few_shot,
                        seed=backends.SEED,
                        pinned=judge_settings.few_shot_pinned,
                    ),
                    max_in_flight=project.judge_max_in_flight,
                    requests_per_minute=judge_settings.requests_per_minute,
                    tokens_per_minute=judge_settings.tokens_per_minute,
                ),
                "price_in_per_million": str(project.judge_price_in),
                "price_out_per_million": str(project.judge_price_out),
                **scoped,
            },
            items_total=0,
            created_by=user,
        )
        run.items_total = judge_work_add(run=run, items=scope)
        JudgeRun.objects.filter(pk=run.pk).update(items_total=run.items_total)
    from judging.tasks import start_judge_run

    transaction.on_commit(lambda: start_judge_run.delay(run.pk))
    return run


def judge_work_add(*, run: JudgeRun, items) -> int:
    """Add a ``JudgeWork`` row for each of ``items`` (a queryset of Item) that has neither a verdict in the run
    nor a row already; one INSERT ... SELECT. Returns how many rows the run has now."""
    judged = Verdict.objects.filter(run=run, item=OuterRef("pk"))
    queued = JudgeWork.objects.filter(run=run, item=OuterRef("pk"))
    todo = items.filter(~Exists(judged), ~Exists(queued))
    sql, params = todo.order_by().values("pk").query.sql_with_params()
    table = JudgeWork._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (run_id, item_id, leased_by, attempts) "  # names from the model, values as parameters
            f"SELECT %s, todo.id, '', 0 FROM ({sql}) AS todo (id) ON CONFLICT DO NOTHING",
            [run.pk, *params],
        )
    return JudgeWork.objects.filter(run=run).count()


def _lease_end():
    return Now() + timezone.timedelta(seconds=settings.LARRY_JUDGE_LEASE_S)


JUDGE_ITEM_FIELDS = ("id", "prompt", "context", "response", "reference")


def judge_work_lease(*, run_id: int, worker: str, limit: int) -> tuple[list[Item], int]:
    """Lease up to ``limit`` of the run's work rows that no live lease holds, for ``LARRY_JUDGE_LEASE_S``.

    One short transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` (workers
    leasing at once take different rows, never wait for each other), then
    the UPDATE. Returns ``(items to judge, with the fields a prompt needs;
    number of rows others hold under a live lease)``: ``([], 0)`` means the
    run has no work left.
    """
    with transaction.atomic():
        free = Q(leased_until__isnull=True) | Q(leased_until__lte=Now())
        rows = JudgeWork.objects.select_for_update(skip_locked=True).filter(free, run_id=run_id)
        picked = dict(rows.order_by("id").values_list("id", "item_id")[:limit])
        if picked:
            JudgeWork.objects.filter(pk__in=list(picked)).update(
                leased_by=worker, leased_until=_lease_end(), attempts=F("attempts") + 1
            )
            JudgeRun.objects.filter(pk=run_id).update(progress_at=Now())
    items = list(Item.objects.filter(pk__in=list(picked.values())).only(*JUDGE_ITEM_FIELDS).order_by("id"))
    others = 0 if items else JudgeWork.objects.filter(run_id=run_id).count()
    return items, others


def judge_work_renew(*, run_id: int, worker: str, item_ids: list[int]) -> bool:
    """Extend ``worker``'s lease on ``item_ids`` (the heartbeat); False once the run no longer runs."""
    JudgeWork.objects.filter(run_id=run_id, item_id__in=item_ids, leased_by=worker).update(leased_until=_lease_end())
    return JudgeRun.objects.filter(pk=run_id, status=JudgeRun.Status.RUNNING).exists()


def judge_work_release(*, run_id: int, worker: str, item_ids: list[int]) -> None:
    """Give ``worker``'s leased rows for ``item_ids`` back, unjudged, for any worker to take at once."""
    JudgeWork.objects.filter(run_id=run_id, item_id__in=item_ids, leased_by=worker).update(
        leased_by="", leased_until=None
    )


def verdicts_store(*, run: JudgeRun, results: list[JudgeResult]) -> None:
    """Write results idempotently: a (run, item) verdict that exists is left as it is; the items' work rows
    are deleted in the same transaction."""
    rows = [
        Verdict(
            run=run,
            item_id=r.item_id,
            verdict=r.verdict,
            rationale=r.rationale,
            reasoning=r.reasoning,
            confidence=r.confidence,
            tokens_in=r.tokens_in,
            tokens_out=r.tokens_out,
            latency_ms=r.latency_ms,
            error=r.error,
            error_class=r.error_class,
            raw_reply=r.raw_reply,
            attempts=r.attempts,
            answered_by=r.answered_by,
        )
        for r in results
    ]
    with transaction.atomic():
        Verdict.objects.bulk_create(rows, batch_size=WRITE_BATCH, ignore_conflicts=True)
        # The items' work is done, whoever held it (a second worker's verdict for an item is ignored above).
        JudgeWork.objects.filter(run=run, item_id__in=[r.item_id for r in results]).delete()
        JudgeRun.objects.filter(pk=run.pk).update(progress_at=Now())


def judge_run_finish_if_complete(*, run_id: int) -> bool:
    """Mark the run finished once every item has a verdict or an error (no work row left), and gate the project.

    Competing workers race here; a conditional UPDATE lets exactly one win,
    and only the winner re-gates. Returns True for the winner.
    """
    run = JudgeRun.objects.get(pk=run_id)
    counts = Verdict.objects.filter(run=run).aggregate(
        done=Count("id", filter=~Q(verdict="")),
        errors=Count("id", filter=Q(verdict="")),
        tokens_in=Sum("tokens_in"),
        tokens_out=Sum("tokens_out"),
    )
    fields = {
        "items_done": counts["done"],
        "items_error": counts["errors"],
        "tokens_in": counts["tokens_in"] or 0,
        "tokens_out": counts["tokens_out"] or 0,
    }
    if counts["done"] + counts["errors"] < run.items_total or JudgeWork.objects.filter(run=run).exists():
        JudgeRun.objects.filter(pk=run_id).update(**fields)
        return False
    won = JudgeRun.objects.filter(pk=run_id, status=JudgeRun.Status.RUNNING).update(
        status=JudgeRun.Status.FINISHED, finished_at=timezone.now(), **fields
    )
    if won:
        gate_apply(project=run.project)
    return bool(won)


def judge_run_cancel(*, run: JudgeRun) -> bool:
    """Stop a queued or running run: chunks not yet started do nothing. Returns False if it had ended."""
    return bool(
        JudgeRun.objects.filter(pk=run.pk, status__in=[JudgeRun.Status.QUEUED, JudgeRun.Status.RUNNING]).update(
            status=JudgeRun.Status.CANCELLED, finished_at=timezone.now()
        )
    )


def judge_run_resume(*, run: JudgeRun, retry_errors: bool = False) -> None:
    """Judge what a run has not judged yet (after a cancel or a failure); with ``retry_errors``, also its errors.

    Items that already have a verdict are never judged twice. The run is
    finished again, and the project re-gated, when every item is accounted for.
    """
    from judging.tasks import start_judge_run

    with transaction.atomic():
        if retry_errors:
            failed = Verdict.objects.filter(run=run, verdict="")
            # Back to work rows first, so that a run over a chosen scope keeps these items in it.
            judge_work_add(run=run, items=Item.objects.filter(pk__in=list(failed.values_list("item_id", flat=True))))
            failed.delete()
        JudgeRun.objects.filter(pk=run.pk).update(status=JudgeRun.Status.RUNNING, finished_at=None, error="")
        transaction.on_commit(lambda: start_judge_run.delay(run.pk))


class RunBusy(ValueError):
    """The run is still queued or running: what failed in it is not settled yet."""


def judge_run_queue_errors(*, run: JudgeRun) -> int:
    """Queue the run's items that have no verdict (judging failed for good) and that the gate left pending,
    for SME review.

    Items with SME ground truth, items another judge decided, and items
    already queued are left as they are. Safe to call twice. Returns how many
    items were newly queued. Raises RunBusy while the run is queued or running.
    """
    if run.status in (JudgeRun.Status.QUEUED, JudgeRun.Status.RUNNING):
        raise RunBusy(f"run {run.pk} is still {run.status}: queue its errors once it has ended")
    return queue_add(project=run.project, item_ids=list(_pending_failures(run).values_list("item_id", flat=True)))


def _pending_failures(run: JudgeRun):
    """The run's error verdicts whose item the gate left pending (or has not gated yet)."""
    return Verdict.objects.filter(run=run, verdict="").filter(
        Q(item__gate_decision__outcome=GateDecision.Outcome.PENDING) | Q(item__gate_decision__isnull=True)
    )


REVIVE_TASKS = 4


def judge_run_revive_if_stalled(*, run_id: int) -> bool:
    """Re-queue a stalled run's work (``selectors.run_stalled_since``); True when this call did.

    Safe to call from many places at once (the run page's poll, ``run_judge``
    waiting): a conditional UPDATE of ``progress_at`` lets one caller win, and
    the run counts as progressing again for a lease's time.
    """
    run = JudgeRun.objects.filter(pk=run_id).first()
    if run is None or run_stalled_since(run) is None:
        return False
    recent = timezone.now() - timezone.timedelta(seconds=settings.LARRY_JUDGE_LEASE_S)
    if run.progress_at and run.progress_at > recent:
        return False  # revived (or leased from) less than a lease ago: give those tasks time to start
    if not JudgeRun.objects.filter(pk=run_id, progress_at=run.progress_at).update(progress_at=Now()):
        return False
    from judging.tasks import judge_run_enqueue

    # A few tasks only: with no worker running, revivals a lease apart would otherwise pile tasks up in the queue.
    judge_run_enqueue(run, most=REVIVE_TASKS)
    return True


def judge_run_fail(*, run_id: int, error: str) -> None:
    """Mark a run failed with the reason; its verdicts stay, the gate ignores the run."""
    JudgeRun.objects.filter(pk=run_id).update(
        status=JudgeRun.Status.FAILED, error=error[:5000], finished_at=timezone.now()
    )


ITEM_FIELDS = ("id", "prompt", "context", "response", "reference", "task_type")


def rule_set_for(label_functions) -> RuleSet:
    """A compiled RuleSet whose keys are the label functions themselves."""
    return RuleSet(Rule(lf, lf.kind, lf.params, lf.field, tuple(lf.task_types or ())) for lf in label_functions)


def rule_rejections(*, project: Project, label_functions) -> Iterator[tuple[int, list[LabelFunction]]]:
    """``(item_id, [label functions that reject it])`` for every item of the project that some rule rejects."""
    rules = rule_set_for(label_functions)
    for item in project.items.values(*ITEM_FIELDS).iterator(chunk_size=WRITE_BATCH):
        rejected = rules.rejections(item)
        if rejected:
            yield item["id"], rejected


def label_functions_apply(*, project: Project) -> int:
    """Run the project's active label functions over all its items and store their hits.

    Hits of the project's rules are replaced as a whole, so the stored hits
    always match the active rules; each hit records its rule's version.
    Returns the number of hits. Concurrent calls for one project run one
    after the other (``_serialise``), each reading what the previous stored.
    """
    with transaction.atomic():
        _serialise(project, RULE_HITS_LOCK)
        active = list(project.label_functions.filter(active=True))
        hits = [
            RuleHit(label_function=lf, item_id=item_id, version=lf.version)
            for item_id, rejecting in rule_rejections(project=project, label_functions=active)
            for lf in rejecting
        ]
        RuleHit.objects.filter(label_function__project=project).delete()
        RuleHit.objects.bulk_create(hits, batch_size=WRITE_BATCH)
    return len(hits)


def project_regate(*, project: Project) -> tuple[int, dict[str, int]]:
    """Run the active label functions, then gate every item: ``(rule hits, {"accept", "reject", "pending"})``."""
    hits = label_functions_apply(project=project)
    return hits, gate_apply(project=project)


def regate_request(project_id: int) -> int:
    """Ask for the project to be re-gated in full (rules, then the gate) after commit; returns the request's
    generation. Requests that pile up while one waits or runs cost one re-gating (``RegateRequest``)."""
    from judging.tasks import regate_project

    with transaction.atomic():
        RegateRequest.objects.get_or_create(project_id=project_id)
        RegateRequest.objects.filter(project_id=project_id).update(generation=F("generation") + 1)
        generation = RegateRequest.objects.get(project_id=project_id).generation
    transaction.on_commit(lambda: regate_project.delay(project_id, generation))
    return generation


def regate_superseded(project_id: int, generation: int) -> bool:
    """Whether a later request for the project exists, whose task will re-gate with newer data."""
    latest = RegateRequest.objects.filter(project_id=project_id).values_list("generation", flat=True).first()
    return latest is not None and latest > generation


@transaction.atomic
def label_function_save(*, rule: LabelFunction, user=None, regate: bool = True) -> LabelFunction:
    """Validate and save a rule, record the change in its history, and re-gate its project in the background.

    A save that changes nothing records nothing. With ``regate=False`` the
    caller re-gates itself (after saving several rules, say). Raises
    serializers.ValidationError for bad params.
    """
    rule.params = validate_params(rule.kind, rule.params)
    rule_set_for([rule])  # the whole rule compiles (field, task types)
    previous = rule.versions.first() if rule.pk else None
    before = previous.after if previous else {}
    after = rule.snapshot()
    if previous and before == after:
        rule.save()
        return rule
    rule.version = (previous.version if previous else rule.version) + 1
    rule.save()
    LabelFunctionVersion.objects.create(
        label_function=rule,
        project=rule.project,
        version=rule.version,
        action=LabelFunctionVersion.Action.UPDATE if previous else LabelFunctionVersion.Action.CREATE,
        before=before,
        after=after,
        changed_by=user,
    )
    if regate:
        regate_request(rule.project_id)
    return rule


@transaction.atomic
def label_function_delete(*, rule: LabelFunction, user=None) -> None:
    """Delete a rule, keeping its history, and re-gate its project in the background.

    Waits for a ``label_functions_apply`` of the project that is running, which
    would otherwise store hits of the deleted rule (a foreign-key violation).
    """
    _serialise(rule.project, RULE_HITS_LOCK)
    LabelFunctionVersion.objects.create(
        label_function=rule,
        project=rule.project,
        version=rule.version + 1,
        action=LabelFunctionVersion.Action.DELETE,
        before=rule.snapshot(),
        changed_by=user,
    )
    project_id = rule.project_id
    rule.delete()
    regate_request(project_id)


def gate_apply(*, project: Project, item_ids: list[int] | None = None) -> dict[str, int]:
    """Decide the project's items (all, or ``item_ids``) with ``gate.decide`` and store the decisions.

    Inputs: SME ground truth, verdicts of the latest finished run, hits of
    active label functions. Returns ``{"accept": n, "reject": n, "pending": n}``
    over the items decided. Concurrent calls for one project (an import, a
    rule edit and an SME decision re-gating at once) run one after the other,
    each reading what the previous stored.
    """
    with transaction.atomic():
        _serialise(project, GATE_LOCK)
        items = project.items.all() if item_ids is None else project.items.filter(pk__in=item_ids)
        truth = ground_truth(item_ids, project=project)
        run = latest_finished_run(project)
        verdicts_qs = Verdict.objects.filter(run=run).exclude(verdict="")
        hits = RuleHit.objects.filter(label_function__project=project, label_function__active=True)
        if item_ids is not None:
            verdicts_qs, hits = verdicts_qs.filter(item_id__in=item_ids), hits.filter(item_id__in=item_ids)
        verdicts = dict(verdicts_qs.values_list("item_id", "verdict")) if run else {}
        rejections: dict[int, list[str]] = defaultdict(list)
        for item_id, reason in hits.values_list("item_id", "label_function__reason"):
            rejections[item_id].append(reason)
        decisions = []
        counts = {"accept": 0, "reject": 0, "pending": 0}
        for item_id in items.values_list("id", flat=True).iterator(chunk_size=WRITE_BATCH):
            outcome = gate.decide(
                ground_truth=truth.get(item_id),
                verdict=verdicts.get(item_id),
                rule_rejections=rejections.get(item_id, []),
            )
            counts[outcome.outcome] += 1
            decisions.append(
                GateDecision(
                    item_id=item_id,
                    outcome=outcome.outcome,
                    basis=outcome.basis,
                    basis_decision=outcome.basis_decision,
                    vetoed=outcome.vetoed,
                    reasons=outcome.reasons,
                    judge_run=run if outcome.basis == "judge" else None,
                )
            )
        GateDecision.objects.filter(item__in=items).delete()
        GateDecision.objects.bulk_create(decisions, batch_size=WRITE_BATCH)
    return counts
