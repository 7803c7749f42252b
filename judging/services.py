"""Writes for the judging app: judge runs, label-function hits, the gate's decisions."""

import json
import logging
from collections import defaultdict
from collections.abc import Iterator

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, OuterRef, Q, Subquery, Sum
from django.db.models.functions import Greatest, Now
from django.utils import timezone

from annotations.models import Item, Project
from annotations.queue import in_sme_queue, queue_add
from annotations.selectors import ground_truth
from judging import backends, calibration, certify, gate, prompts
from judging.backends import JudgeResult
from judging.label_functions import Rule, RuleSet, validate_params
from judging.models import (
    Certification,
    GateDecision,
    GatingPolicy,
    GatingPolicyChange,
    JudgeRun,
    JudgeSettings,
    JudgeWork,
    LabelFunction,
    LabelFunctionVersion,
    PolicyTier,
    RegateRequest,
    RubricVersion,
    RuleHit,
    Verdict,
)
from judging.selectors import (
    certification_basis,
    certification_current,
    certification_threshold,
    few_shot_examples,
    gating_policy,
    policy_certainty,
    policy_verdicts,
    run_stalled_since,
)
from larry_web import background, work
from larry_web.planner import analyze_after_bulk_write

logger = logging.getLogger(__name__)

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


def judge_endpoint_check(*, project: Project, endpoint=None) -> None:
    """Check that the judge endpoint (``endpoint``, else the project's default) answers
    (``backends.judge_connection_check``), before a run is started: raises ``backends.JudgeUnreachable`` with a
    message naming the URL and the fault."""
    backends.judge_connection_check(backends.judge_config_for(project, endpoint))


class LearnFromError(ValueError):
    """A run the local classifier cannot learn from (another project's, not finished, or a local run)."""


@transaction.atomic  # the run and its work rows together: a failure leaves no run stuck at "queued"
def judge_run_create(
    *,
    project: Project,
    user=None,
    endpoint=None,
    item_ids: list[int] | None = None,
    local: bool = False,
    learn_from: JudgeRun | None = None,
) -> JudgeRun:
    """Create a run over the project's items (all, or only ``item_ids``) and enqueue it after commit.

    ``endpoint`` (a ``JudgeEndpoint`` of the project, e.g. a cascade tier's)
    judges the run; None means the project's default endpoint, else the
    environment's judge, else the local classifier (``backends.judge_config_for``).
    ``local`` asks for the local classifier whatever the project's judge; ``learn_from`` (a finished LLM run
    of the project, implies ``local``) has it learn from that run's verdicts as well as the SME labels
    (distillation, ``backends.judge_with_local_classifier``; the SME label wins on an item that has both):
    recorded as ``config["learn_from_run"]`` and ``config["learn_from_judge"]``. Raises LearnFromError.
    The run records which judge it is (resolved now, so later setting changes
    do not alter it) and, for an
    LLM judge, the snapshot of what determines its output (``backends.run_config``):
    the rubric version and the exact system prompt, and the few-shot examples
    pinned by staff or drawn now from SME ground truth (``selectors.few_shot_examples``).
    Its scope is ``item_ids`` (ids of other projects' items are ignored), or,
    with None, every item of the project present when the run starts;
    ``items_total`` counts the scope. An LLM run gets one ``JudgeWork`` row per
    item of its scope, in this transaction.
    """
    if learn_from is not None:
        if learn_from.project_id != project.pk:
            raise LearnFromError(f"run {learn_from.pk} is not a run of project {project.slug}")
        if learn_from.status != JudgeRun.Status.FINISHED:
            raise LearnFromError(f"run {learn_from.pk} is {learn_from.status}: learn only from a finished run")
        if learn_from.backend != JudgeRun.Backend.OPENAI:
            raise LearnFromError(f"run {learn_from.pk} is a local classifier's: learn from an LLM judge's run")
        local = True
    config = backends.judge_config_for(project, endpoint)
    # A prompt without a response has nothing to judge (it "needs a response": a teacher run may answer it).
    judgeable = project.items.exclude(response="")
    scope = judgeable if item_ids is None else judgeable.filter(pk__in=item_ids)
    scoped = {} if item_ids is None else {"scope": "items"}
    if local or config.is_local:
        teacher = {}
        if learn_from is not None:
            teacher = {"learn_from_run": learn_from.pk, "learn_from_judge": learn_from.judge_label}
        run = JudgeRun.objects.create(
            project=project,
            backend=JudgeRun.Backend.LOCAL,
            model=backends.LOCAL_MODEL_NAME,
            config={"seed": 0, **teacher, **scoped, **({"item_ids": sorted(set(item_ids))} if scoped else {})},
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
            endpoint_id=config.endpoint_id,
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
                    max_in_flight=config.max_in_flight,
                    requests_per_minute=judge_settings.requests_per_minute,
                    tokens_per_minute=judge_settings.tokens_per_minute,
                ),
                "price_in_per_million": str(config.price_in),
                "price_out_per_million": str(config.price_out),
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
    nor a row already (``larry_web.work.work_add``). Returns how many rows the run has now."""
    return work.work_add(JudgeWork, run=run, items=items, done_model=Verdict)


JUDGE_ITEM_FIELDS = ("id", "prompt", "context", "response", "reference")


def judge_work_lease(*, run_id: int, worker: str, limit: int) -> tuple[list[Item], int]:
    """Lease up to ``limit`` of the run's work rows that no live lease holds (``larry_web.work.work_lease``).
    Returns ``(items to judge, with the fields a prompt needs; number of rows others hold under a live
    lease)``: ``([], 0)`` means the run has no work left."""
    item_ids, others = work.work_lease(JudgeWork, JudgeRun, run_id=run_id, worker=worker, limit=limit)
    items = list(Item.objects.filter(pk__in=item_ids).only(*JUDGE_ITEM_FIELDS).order_by("id"))
    return items, others


def judge_work_renew(*, run_id: int, worker: str, item_ids: list[int]) -> bool:
    """Extend ``worker``'s lease on ``item_ids`` (the heartbeat); False once the run no longer runs."""
    return work.work_renew(JudgeWork, JudgeRun, run_id=run_id, worker=worker, item_ids=item_ids)


def judge_work_release(*, run_id: int, worker: str, item_ids: list[int]) -> None:
    """Give ``worker``'s leased rows for ``item_ids`` back, unjudged, for any worker to take at once."""
    work.work_release(JudgeWork, run_id=run_id, worker=worker, item_ids=item_ids)


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
    """Mark the run finished once every item has a verdict or an error (no work row left), calibrate it, and
    ask for the project's re-gating.

    Competing workers race here; a conditional UPDATE lets exactly one win,
    and only the winner calibrates, in the same transaction as the status change
    (``judge_run_calibrate_on_finish``, which never raises), and asks (``regate_request``: queued, coalesced and
    retried, never inline). A finished run decides nothing until a lead puts
    it in the gating policy (``gating_policy_set``); the re-gating still
    refreshes what the page offers. Returns True for the winner.
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
    # One transaction, so no one reads the run as finished before its calibration is written (a lead
    # choosing it for the policy in between would have gated on no calibrated confidence).
    with transaction.atomic():
        won = JudgeRun.objects.filter(pk=run_id, status=JudgeRun.Status.RUNNING).update(
            status=JudgeRun.Status.FINISHED, finished_at=timezone.now(), **fields
        )
        if won:
            judge_run_calibrate_on_finish(run=run)
    if won:
        regate_request(run.project_id)
    return bool(won)


def judge_run_cancel(*, run: JudgeRun) -> bool:
    """Stop a queued or running run: chunks not yet started do nothing. Returns False if it had ended."""
    return work.run_cancel(JudgeRun, run_id=run.pk)


def judge_run_resume(*, run: JudgeRun, retry_errors: bool = False) -> None:
    """Judge what a run has not judged yet (after a cancel or a failure); with ``retry_errors``, also its errors.

    Items that already have a verdict are never judged twice. The run is
    finished again, and the project re-gated, when every item is accounted for.
    Raises RunBusy for a run in the gating policy: its verdicts decide items
    (and its thresholds were chosen on them) until a lead takes it out.
    """
    from judging.tasks import start_judge_run

    if PolicyTier.objects.filter(run=run).exists():
        raise RunBusy(
            f"run {run.pk} is in the gating policy: take it out of the policy before resuming it, or start a new run"
        )
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


def judge_runs_revive_stalled() -> int:
    """``judge_run_revive_if_stalled`` on every running LLM run; returns how many this call revived (the
    workers' watch, ``larry_web.celery``)."""
    running = JudgeRun.objects.filter(status=JudgeRun.Status.RUNNING, backend=JudgeRun.Backend.OPENAI)
    return sum(judge_run_revive_if_stalled(run_id=run_id) for run_id in running.values_list("id", flat=True))


def judge_run_fail(*, run_id: int, error: str) -> None:
    """Mark a run failed with the reason; its verdicts stay, the gate ignores the run."""
    work.run_fail(JudgeRun, run_id=run_id, error=error)


ITEM_FIELDS = ("id", "prompt", "context", "response", "reference", "task_type")


def rule_set_for(label_functions) -> RuleSet:
    """A compiled RuleSet whose keys are the label functions themselves."""
    return RuleSet(Rule(lf, lf.kind, lf.params, lf.field, tuple(lf.task_types or ())) for lf in label_functions)


def rule_rejections(*, project: Project, label_functions) -> Iterator[tuple[int, list[LabelFunction]]]:
    """``(item_id, [label functions that reject it])`` for every item of the project that some rule rejects.

    Without label functions nothing is read (no rule rejects anything): a re-gating after an import of a
    project with no rules skips reading every item's texts.
    """
    label_functions = list(label_functions)
    if not label_functions:
        return
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
    """Run the active label functions, gate every item, then order the SME queue by the policy's uncertainty
    (``sme_queue_prioritise``): ``(rule hits, {"accept", "reject", "pending"})``.

    Called by the ``regate_project`` task only; everything else asks through ``regate_request``.
    """
    hits = label_functions_apply(project=project)
    counts = gate_apply(project=project)
    sme_queue_prioritise(project=project)
    # Every decision (and hit) of the project was just written again: after an import, fresh statistics.
    analyze_after_bulk_write({GateDecision._meta.db_table: sum(counts.values()), RuleHit._meta.db_table: hits})
    return hits, counts


def project_regate_now(*, project: Project) -> tuple[int, dict[str, int]]:
    """``project_regate`` here and now, recorded (``regate_finished``) as done for every request made before it
    began, so a certificate those requests apply counts as applied (``selectors.certification_applied``): for
    commands that wait for the re-gating rather than queue it. Returns what ``project_regate`` returns."""
    generation = RegateRequest.objects.filter(project=project).values_list("generation", flat=True).first()
    try:
        done = project_regate(project=project)
    except Exception as exc:
        regate_finished(project_id=project.pk, generation=generation, error=f"{type(exc).__name__}: {exc}")
        raise
    regate_finished(project_id=project.pk, generation=generation)
    return done


def regate_request(project_id: int) -> int:
    """Ask for the project to be re-gated in full (rules, gate, SME-queue order) after commit; returns the
    request's generation. Requests that pile up while one waits or runs cost one re-gating (``RegateRequest``)."""
    from judging.tasks import regate_project

    with transaction.atomic():
        RegateRequest.objects.get_or_create(project_id=project_id)
        RegateRequest.objects.filter(project_id=project_id).update(generation=F("generation") + 1)
        generation = RegateRequest.objects.get(project_id=project_id).generation

    def enqueue() -> None:
        try:
            background.enqueue(regate_project, project_id, generation)
        except background.BROKER_ERRORS as exc:
            # The broker is down: the request stays pending (the project page shows it, with the re-gate
            # button); what was committed stands, and the caller's response is not a server error.
            logger.error("re-gating %s of project %s not queued: the broker failed: %s", generation, project_id, exc)

    transaction.on_commit(enqueue)
    return generation


def regate_superseded(project_id: int, generation: int) -> bool:
    """Whether a later request for the project exists, whose task will re-gate with newer data."""
    latest = RegateRequest.objects.filter(project_id=project_id).values_list("generation", flat=True).first()
    return latest is not None and latest > generation


def regate_finished(*, project_id: int, generation: int | None, error: str = "") -> None:
    """Record how a re-gating ended: ``error`` "" for success (clearing an earlier error), else why it failed
    (the project page shows it). A success also records the generation it covered."""
    fields = {"last_finished_at": timezone.now(), "last_error": error[:5000]}
    if not error and generation is not None:
        # Never backwards: an earlier request's task that ends after a later one's covered less.
        fields["last_generation_done"] = Greatest(F("last_generation_done"), generation)
    RegateRequest.objects.get_or_create(project_id=project_id)
    RegateRequest.objects.filter(project_id=project_id).update(**fields)


class PolicyError(ValueError):
    """A gating policy that cannot be set: a run of another project, an unfinished run, a bad threshold..."""


def gating_policy_set(
    *,
    project: Project,
    tiers: list[tuple],
    target: float | None = None,
    risk: float | None = None,
    user=None,
    before: dict | None = None,
) -> GatingPolicy:
    """Set the project's gating policy, log the change, and ask for a re-gating; the one way a judge comes to
    decide items.

    ``tiers`` is ``[(run, threshold)]`` or ``[(run, threshold, decides, note)]`` in the order they are tried:
    ``threshold`` is the least calibrated certainty in the verdict (``gate.verdict_certainty``), 0.5 to 1,
    for the tier to decide an item,
    None for the verdict alone; ``decides`` False keeps the tier in the policy but lets it decide nothing
    (``note`` says why). ``[]`` leaves the gate to the SMEs and the rules. ``target`` (agreement with the SMEs,
    0.5 to 1) and ``risk`` (0 to 0.5) are recorded for choosing thresholds. The policy and a
    ``GatingPolicyChange`` (who, when, before and after as ``GatingPolicy.snapshot``) are written in one
    transaction; a change that changes nothing logs nothing (``before`` overrides the "before" snapshot: the
    policy as it was before a recalibration of its runs). Raises PolicyError for a run of another project,
    a run not finished, a run named twice, a threshold, target or risk out of range.
    """
    specs = []
    for spec in tiers:
        run, threshold, decides, note = (*spec, True, "")[:4] if len(spec) == 2 else spec
        if run.project_id != project.pk:
            raise PolicyError(f"run {run.pk} is not a run of project {project.slug}")
        if run.status != run.Status.FINISHED:
            raise PolicyError(f"run {run.pk} is {run.status}: only a finished run can gate")
        if threshold is not None and not 0.5 <= threshold <= 1.0:
            raise PolicyError(f"threshold {threshold} of run {run.pk}: a certainty is 0.5 to 1")
        specs.append((run, threshold, bool(decides), note or ""))
    if len({run.pk for run, *_ in specs}) != len(specs):
        raise PolicyError("a run can be only one tier of the policy")
    if target is not None and not 0.5 <= target < 1.0:
        raise PolicyError(f"target agreement {target}: 0.5 or more, below 1 (no finite sample certifies 1)")
    if risk is not None and not 0.001 <= risk <= 0.5:
        raise PolicyError(f"risk {risk}: 0.001 to 0.5")
    with transaction.atomic():
        policy, _ = GatingPolicy.objects.get_or_create(project=project)
        policy = GatingPolicy.objects.select_for_update().get(pk=policy.pk)  # one change at a time
        had_tiers = policy.tiers.exists()
        if before is None:
            before = policy.snapshot() if had_tiers or policy.target_agreement is not None else {}
        policy.tiers.all().delete()
        PolicyTier.objects.bulk_create(
            PolicyTier(policy=policy, tier=n, run=run, threshold=threshold, decides=decides, note=note)
            for n, (run, threshold, decides, note) in enumerate(specs, start=1)
        )
        policy.target_agreement, policy.risk, policy.updated_by = target, risk, user
        policy.save()
        after = policy.snapshot()
        if before != after:
            GatingPolicyChange.objects.create(project=project, changed_by=user, before=before, after=after)
            regate_request(project.pk)
    return policy


def gating_policy_compute(
    *, project: Project, runs: list[JudgeRun], target: float, risk: float, user=None, before: dict | None = None
) -> GatingPolicy:
    """Make ``runs`` the project's cascade, in order, each tier's threshold chosen from the SME labels.

    Tier k's threshold is chosen on the SME-labelled items that reach it (no
    earlier tier decided them) and that it judged with a calibrated
    confidence, leaving out the run's few-shot examples: ``certainty`` is
    its calibrated confidence in its own verdict (``gate.verdict_certainty``), an item ``agrees``
    when the verdict is the SME label, and ``thresholds.choose_threshold``
    picks the least threshold whose agreement is at least ``target`` with
    probability at least 1 - ``risk`` (fixed-sequence testing, Jung et al.,
    "Trust or Escalate", ICLR 2025). A tier that cannot reach the target
    stays in the policy deciding nothing, with the reason as its note, and
    its labelled items go on to the next tier. The policy is written and
    logged by ``gating_policy_set`` (which raises PolicyError for a run that
    cannot gate). Returns the policy.
    """
    from judging.thresholds import choose_threshold

    truth = ground_truth(project=project)
    reaching = set(truth)
    tiers = []
    for run in runs:
        left_out = set(run.few_shot_item_ids)  # the local classifier's own labels: out-of-fold, so kept
        rows = [
            (item_id, verdict, p)
            for item_id, verdict, p in Verdict.objects.filter(run=run, item_id__in=list(reaching))
            .exclude(verdict="")
            .values_list("item_id", "verdict", "confidence_calibrated")
            if item_id not in left_out
        ]
        calibrated = [(item_id, verdict, p) for item_id, verdict, p in rows if p is not None]
        if rows and not calibrated:
            note = f"run {run.pk} has no calibrated confidence: recalibrate it on the SME labels first"
            tiers.append((run, None, False, note))
            continue
        choice = choose_threshold(
            [gate.verdict_certainty(verdict, p) for _, verdict, p in calibrated],
            [verdict == truth[item_id] for item_id, verdict, _ in calibrated],
            target=target,
            risk=risk,
        )
        if not choice.decides:
            tiers.append((run, None, False, choice.reason))
            continue
        low, high = choice.interval or (None, None)
        note = (
            f"chosen on {choice.n_labelled} SME-labelled items reaching this tier: {choice.n} clear the threshold "
            f"with agreement {choice.agreement:.3f} (95 % CI {low:.3f} to {high:.3f}), p = {choice.p_value:.2g}; "
            f"fixed-sequence binomial testing at target {target:g}, risk {risk:g} (Jung et al., ICLR 2025)"
        )
        tiers.append((run, choice.threshold, True, note))
        reaching -= {
            item_id for item_id, verdict, p in calibrated if gate.verdict_certainty(verdict, p) >= choice.threshold
        }
    return gating_policy_set(project=project, tiers=tiers, target=target, risk=risk, user=user, before=before)


def escalated_item_ids(project: Project) -> list[int]:
    """The items the gating policy in force sends on: no tier of it decides them and no rule vetoed them.

    SME-labelled items are included: the next tier's threshold is chosen on
    the labelled items that reach it. Raises PolicyError when the project has
    no policy (then every item would be escalated: start an ordinary run).
    """
    policy = gating_policy(project)
    if policy is None or not policy.tiers.all():
        raise PolicyError("no gating policy yet: a cascade's first tier is an ordinary run that a lead chose")
    decided = policy_verdicts(project, policy=policy)
    vetoed = set(GateDecision.objects.filter(item__project=project, vetoed=True).values_list("item_id", flat=True))
    return [
        item_id
        for item_id in project.items.order_by("id").values_list("id", flat=True)
        if item_id not in decided and item_id not in vetoed
    ]


def escalation_run_create(*, project: Project, endpoint=None, user=None) -> JudgeRun:
    """Start a run of ``endpoint`` (the next tier's judge) over only the items the policy in force escalates.

    The run's config records the policy it escalates from (``escalated_from``:
    the tiers' runs and thresholds). Raises PolicyError without a policy,
    with nothing to escalate, or when a run of that judge already escalates
    from the same policy (a double click, a second tab).
    """
    with transaction.atomic():
        # One escalation per policy state and judge at a time: a double click or a second tab finds the first.
        GatingPolicy.objects.select_for_update().filter(project=project).first()
        item_ids = escalated_item_ids(project)
        if not item_ids:
            raise PolicyError("the policy in force decides every item: nothing to escalate")
        policy = gating_policy(project)
        escalated_from = [
            {"tier": tier.tier, "run": tier.run_id, "threshold": tier.threshold} for tier in policy.tiers.all()
        ]
        same = JudgeRun.objects.filter(
            project=project,
            endpoint=endpoint,
            status__in=[JudgeRun.Status.QUEUED, JudgeRun.Status.RUNNING, JudgeRun.Status.FINISHED],
        )
        for earlier in same.only("pk", "config"):
            if earlier.config.get("escalated_from") == escalated_from:
                raise PolicyError(
                    f"run {earlier.pk} already judges what this policy escalates to that judge: "
                    "use it as the next tier, or change the policy first"
                )
        run = judge_run_create(project=project, user=user, endpoint=endpoint, item_ids=item_ids)
        run.config["escalated_from"] = escalated_from
        JudgeRun.objects.filter(pk=run.pk).update(config=run.config)
    return run


def judge_run_extend(*, parent: JudgeRun, item_ids: list[int], user=None) -> JudgeRun | None:
    """Start a run that extends ``parent`` (a tier of the gating policy) to ``item_ids``, items added since it
    ran (a teacher run's answers): the same judge (backend, model, URL, endpoint) and the same recorded prompt,
    few-shot examples, seed and limits (``parent.config``), over those of the items with a response and no
    verdict of ``parent`` or of a run extending it (nor work left in one), recorded as ``config["extends"]``.
    Once finished it is calibrated on ``parent``'s SME labels and folds (``judge_run_calibrate``), and the tier
    reads its verdicts as its own
    (``selectors.tier_runs``): the policy a lead chose decides the new items, and the policy is not changed.
    Returns None when no item is left to judge."""
    # Items the tier has a say on already, or will have (an extension still running), are not judged again.
    extensions = JudgeRun.objects.filter(config__extends=parent.pk).exclude(
        status__in=[JudgeRun.Status.FAILED, JudgeRun.Status.CANCELLED]
    )
    judged = Verdict.objects.filter(Q(run=parent) | Q(run__in=extensions)).values("item_id")
    pending = JudgeWork.objects.filter(run__in=extensions).values("item_id")
    scope = list(
        parent.project.items.filter(pk__in=item_ids)
        .exclude(response="")
        .exclude(pk__in=judged)
        .exclude(pk__in=pending)
        .order_by("id")
        .values_list("id", flat=True)
    )
    if not scope:
        return None
    kept = {k: v for k, v in parent.config.items() if k not in ("escalated_from", "extends")}
    with transaction.atomic():
        run = JudgeRun.objects.create(
            project=parent.project,
            backend=parent.backend,
            model=parent.model,
            base_url=parent.base_url,
            endpoint_id=parent.endpoint_id,
            config={**kept, "scope": "items", "item_ids": scope, "extends": parent.pk},
            items_total=len(scope),
            created_by=user,
        )
        if run.backend == JudgeRun.Backend.OPENAI:
            judge_work_add(run=run, items=Item.objects.filter(pk__in=scope))
        from judging.tasks import start_judge_run

        transaction.on_commit(lambda: start_judge_run.delay(run.pk))
    logger.info("run %s extends run %s (a tier of the gating policy) to %s items", run.pk, parent.pk, len(scope))
    return run


def policy_runs_extend(*, project: Project, item_ids: list[int], user=None) -> list[JudgeRun]:
    """Have the gating policy in force judge ``item_ids`` (new items, a teacher run's answers): one
    ``judge_run_extend`` per tier that decides. Every such tier judges every item (a cascade's later tier thus
    also judges what an earlier one decides; the gate takes the first that is sure). Raises PolicyError when
    the project has no policy (nothing is judged then). Returns the runs started."""
    policy = gating_policy(project)
    tiers = [tier for tier in policy.tiers.select_related("run", "run__project") if tier.decides] if policy else []
    if not tiers:
        raise PolicyError(
            f"project {project.slug} has no gating policy that decides: nothing was judged (choose a policy, then "
            "start a judge run)"
        )
    runs = [judge_run_extend(parent=tier.run, item_ids=item_ids, user=user) for tier in tiers]
    return [run for run in runs if run is not None]


def sme_queue_prioritise(*, project: Project) -> int:
    """Order the SME queue by the gating policy's uncertainty, and queue what the policy cannot decide.

    Every item the gate left pending gets priority 1 - certainty, its best
    calibrated certainty in its own verdict among the policy's tiers,
    or 1 when no tier has a calibrated verdict on it (least certain of all);
    the queue hands out the highest first (``annotations.queue``), and open
    slots take the new priority. An item decided since (by a later tier, say)
    goes back to priority 0, behind every pending one. Pending items that some
    tier judged (so the policy could not decide them) are queued for SME review, among them a judge's accepts
    that a certificate in force holds back (``gate.CERTIFICATE_REASON``: below the certified threshold, or any
    when nothing is certified), the least certain first like every pending item; items no tier judged at all
    (errors) are queued from the run page (``judge_run_queue_errors``). Items decided meanwhile are not queued;
    an item already queued is not queued twice. Logs how many were queued, and how many of those the
    certificate held back. Without a policy, nothing changes. Returns how many items were newly queued.
    """
    policy = gating_policy(project)
    if policy is None or not policy.tiers.all():
        return 0
    from annotations.models import Item, Slot

    certain = policy_certainty(project, policy=policy)
    run_ids = [tier.run_id for tier in policy.tiers.all()]
    rows = (
        project.items.filter(gate_decision__outcome=GateDecision.Outcome.PENDING)
        .annotate(in_sme_queue=in_sme_queue())
        .values_list("id", "priority", "in_sme_queue", "gate_decision__reasons")
    )
    pending, held_back = [], set()
    for item_id, priority, queued, reasons in rows:
        pending.append((item_id, priority))
        if not queued and gate.CERTIFICATE_REASON in (reasons or []):
            held_back.add(item_id)
    changed = [
        Item(pk=item_id, priority=1.0 - certain[item_id] if item_id in certain else 1.0)
        for item_id, priority in pending
    ]
    changed = [item for item, (_, old) in zip(changed, pending, strict=True) if item.priority != old]
    with transaction.atomic():
        Item.objects.bulk_update(changed, ["priority"], batch_size=WRITE_BATCH)
        decided = project.items.exclude(gate_decision__outcome=GateDecision.Outcome.PENDING).exclude(priority=0)
        if decided.update(priority=0) or changed:  # open slots take their item's priority, in one statement
            Slot.objects.filter(project=project, done=False).exclude(priority=F("item__priority")).update(
                priority=Subquery(Item.objects.filter(pk=OuterRef("item_id")).values("priority")[:1])
            )
    judged = set(
        Verdict.objects.filter(run_id__in=run_ids, item__in=[i for i, _ in pending])
        .exclude(verdict="")
        .values_list("item_id", flat=True)
    )
    added = queue_add(project=project, item_ids=sorted(judged))
    if added:
        logger.info(
            "sme queue of project %s: %s items queued for SME review, %s of them judge accepts the certificate "
            "in force holds back",
            project.slug,
            added,
            len(held_back & judged),
        )
    return added


class RuleVersionConflict(Exception):
    """The rule was saved by someone else after the form being saved was opened: ``version`` is its own now."""

    def __init__(self, version: int):
        super().__init__(f"the rule is at version {version} now")
        self.version = version


@transaction.atomic
def label_function_save(
    *, rule: LabelFunction, user=None, regate: bool = True, expected_version: int | None = None
) -> LabelFunction:
    """Validate and save a rule, record the change in its history, and re-gate its project in the background.

    A save that changes nothing records nothing. With ``regate=False`` the
    caller re-gates itself (after saving several rules, say). ``expected_version``: the version the
    lead's form was opened at, checked under the rule's row lock (None: not checked). Raises
    serializers.ValidationError for bad params, RuleVersionConflict (nothing saved) when the stored rule
    is no longer at ``expected_version``.
    """
    rule.params = validate_params(rule.kind, rule.params)
    rule_set_for([rule])  # the whole rule compiles (field, task types)
    previous = None
    if rule.pk:
        # Two saves at once (two tabs, two leads) would both read the same last version and record the next
        # number twice: the second waits here for the first to commit, then numbers after it.
        stored = LabelFunction.objects.select_for_update().filter(pk=rule.pk).values_list("version", flat=True)
        stored = stored.first()
        if expected_version is not None and stored is not None and stored != expected_version:
            raise RuleVersionConflict(stored)
        previous = rule.versions.order_by("-version", "-id").first()
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
    if LabelFunction.objects.select_for_update().filter(pk=rule.pk).first() is None:
        return  # deleted meanwhile (another tab), with its history
    last = rule.versions.order_by("-version").values_list("version", flat=True).first()
    LabelFunctionVersion.objects.create(
        label_function=rule,
        project=rule.project,
        version=max(last or 0, rule.version) + 1,
        action=LabelFunctionVersion.Action.DELETE,
        before=rule.snapshot(),
        changed_by=user,
    )
    project_id = rule.project_id
    rule.delete()
    regate_request(project_id)


def gate_apply(*, project: Project, item_ids: list[int] | None = None) -> dict[str, int]:
    """Decide the project's items (all, or ``item_ids``) with ``gate.decide`` and store the decisions.

    Inputs: SME ground truth, the gating policy's verdicts (``selectors.policy_verdicts``: the first tier
    whose calibrated certainty clears its threshold; none without a policy), hits of active label functions.
    With a certificate in force (``certification_set``), a judge's accept on an item whose P(accept)
    (``certify.p_accept_by_item``) is below the certified threshold, or on any item when nothing is certified
    or the certificate is void (``selectors.certification_threshold``), is left pending for the SMEs
    (``gate.decide``'s ``certified``).
    Returns ``{"accept": n, "reject": n, "pending": n}`` over the items decided. Concurrent calls for one
    project (an import, a rule edit and an SME decision re-gating at once) run one after the other, each
    reading what the previous stored.
    """
    Basis, Outcome = GateDecision.Basis, GateDecision.Outcome
    with transaction.atomic():
        _serialise(project, GATE_LOCK)
        items = project.items.all() if item_ids is None else project.items.filter(pk__in=item_ids)
        truth = ground_truth(item_ids, project=project)
        decided = policy_verdicts(project, item_ids=item_ids)
        certification = certification_current(project)
        p_accept = certify.p_accept_by_item(project, gating_policy(project), item_ids) if certification else {}
        # A void certificate (the policy or a calibration changed since) certifies nothing.
        threshold = certification_threshold(certification) if certification else None
        hits = RuleHit.objects.filter(label_function__project=project, label_function__active=True)
        if item_ids is not None:
            hits = hits.filter(item_id__in=item_ids)
        rejections: dict[int, list[str]] = defaultdict(list)
        for item_id, reason in hits.values_list("item_id", "label_function__reason"):
            rejections[item_id].append(reason)
        needs_response = set(items.filter(response="").values_list("id", flat=True))
        decisions = []
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        counts = {Outcome.ACCEPT.value: 0, Outcome.REJECT.value: 0, Outcome.PENDING.value: 0}
        for item_id in items.values_list("id", flat=True).iterator(chunk_size=WRITE_BATCH):
            tier, verdict = decided.get(item_id, (None, None))
            certified = None
            if certification is not None:
                p = p_accept.get(item_id)
                certified = threshold is not None and p is not None and p >= threshold
            result = gate.decide(
                ground_truth=truth.get(item_id),
                verdict=verdict,
                rule_rejections=rejections.get(item_id, []),
                verdict_basis=Basis.JUDGE if tier is None or tier.threshold is None else Basis.TIER,
                tier=tier.tier if tier is not None else None,
                certified=certified,
                needs_response=item_id in needs_response,
            )
            counts[result.outcome] += 1
            by_judge = result.basis in (Basis.JUDGE, Basis.TIER)
            decisions.append(
                (
                    item_id,
                    str(result.outcome),
                    str(result.basis),
                    str(result.basis_decision),
                    result.vetoed,
                    json.dumps(result.reasons) if result.reasons else "[]",
                    tier.run_id if by_judge else None,
                    tier.tier if by_judge else None,
                    now,
                )
            )
        GateDecision.objects.filter(item__in=items).delete()
        _gate_decisions_insert(decisions)
    return counts


_DECISION_COLUMNS = ("item_id", "outcome", "basis", "basis_decision", "vetoed", "reasons", "judge_run_id", "tier")


def _gate_decisions_insert(rows: list[tuple]) -> None:
    """Insert gate decisions given as ``(*_DECISION_COLUMNS, decided_at)`` tuples (reasons as JSON text), in the
    caller's transaction: PostgreSQL ``COPY``, else ``executemany`` in batches. Building a model object per
    decision for ``bulk_create`` was most of a 50,000-item re-gating's time (cProfile: ~5 of 8 s)."""
    table = connection.ops.quote_name(GateDecision._meta.db_table)
    columns = ", ".join((*_DECISION_COLUMNS, "decided_at"))
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        marks = ", ".join(["%s"] * (len(_DECISION_COLUMNS) + 1))
        for start in range(0, len(rows), WRITE_BATCH):
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows[start : start + WRITE_BATCH])


# Calibration against the SMEs (``judging.calibration``): a person's action, or part of a run's finish.


def judge_run_calibrate(*, run: JudgeRun) -> dict:
    """Fit the run's recalibration map on SME labels and write ``confidence_calibrated`` for all its verdicts.

    Labels: SME ground truth of the run's items that have a raw confidence,
    less the items the run showed as few-shot examples. Each labelled item's
    calibrated value is out-of-fold (``calibration.cross_fit``); each other
    item gets the map of fold ``calibration.fold_key`` mod K; verdicts without a raw confidence
    stay None. With too few labels of a kind (``calibration.MIN_PER_CLASS``),
    nothing is calibrated and every calibrated value of the run is cleared.
    Returns the summary stored in ``run.calibration``: ``{"status":
    "calibrated" | "not_enough_labels", "method", "map", "n_labels",
    "n_accept", "n_reject", "need", "folds", "seed", "n_calibrated",
    "n_without_confidence", "few_shot_excluded", "fitted_at", "reason"}``.
    Safe to repeat: the same labels give the same values.
    """
    shown = set(run.few_shot_item_ids)
    truth = {i: label for i, label in ground_truth(project=run.project).items() if i not in shown}

    def rows_of(of: JudgeRun) -> list[tuple]:
        return list(
            Verdict.objects.filter(run=of, confidence__isnull=False)
            .order_by("item_id")
            .values_list("id", "item_id", "confidence", "item__external_id")
        )

    rows = rows_of(run)
    # An extension (``judge_run_extend``) is calibrated on the labels of the run it extends, with the same folds,
    # so its items get the values they would have had in that run; only its own verdicts are written.
    extended = JudgeRun.objects.filter(pk=run.config.get("extends")).first() if run.config.get("extends") else None
    labelled_rows = rows_of(extended) if extended is not None else rows
    labelled = [(vid, conf, truth[item_id] == "accept") for vid, item_id, conf, _ in labelled_rows if item_id in truth]
    others = [(vid, conf, calibration.fold_key(ext)) for vid, item_id, conf, ext in rows if item_id not in truth]
    y = [accepted for _, _, accepted in labelled]
    summary = {
        "n_labels": len(labelled),
        "n_accept": sum(y),
        "n_reject": len(y) - sum(y),
        "need": calibration.MIN_PER_CLASS,
        "seed": calibration.SEED,
        "n_without_confidence": Verdict.objects.filter(run=run, confidence__isnull=True).count(),
        "few_shot_excluded": len(shown),
        "fitted_at": timezone.now().isoformat(),
    }
    try:
        fit = calibration.cross_fit(
            [conf for _, conf, _ in labelled],
            y,
            [conf for _, conf, _ in others],
            seed=calibration.SEED,
            unlabelled_keys=[key for _, _, key in others],
        )
    except calibration.NotEnoughLabels as exc:
        summary.update(status="not_enough_labels", reason=str(exc), method=None, map=None, folds=0, n_calibrated=0)
        with transaction.atomic():
            Verdict.objects.filter(run=run, confidence_calibrated__isnull=False).update(confidence_calibrated=None)
            JudgeRun.objects.filter(pk=run.pk).update(calibration=summary)
        run.calibration = summary
        return summary
    ids = [vid for vid, _, _ in labelled] + [vid for vid, _, _ in others]
    values = [float(v) for v in fit.labelled] + [float(v) for v in fit.unlabelled]
    if extended is not None:
        ids, values = [vid for vid, _, _ in others], [float(v) for v in fit.unlabelled]
    summary.update(
        status="calibrated",
        reason="",
        method=fit.method,
        map=fit.mapping,
        folds=fit.folds,
        n_calibrated=len(ids),
    )
    with transaction.atomic():
        _write_calibrated(ids, values)
        JudgeRun.objects.filter(pk=run.pk).update(calibration=summary)
    run.calibration = summary
    return summary


def _write_calibrated(ids: list[int], values: list[float]) -> None:
    """Set ``confidence_calibrated`` by verdict id: one UPDATE ... FROM unnest() per batch on PostgreSQL,
    skipping rows whose value is already right (a repeat with the same labels writes nothing)."""
    if connection.vendor != "postgresql":
        Verdict.objects.bulk_update(
            [Verdict(pk=i, confidence_calibrated=v) for i, v in zip(ids, values, strict=True)],
            ["confidence_calibrated"],
            batch_size=WRITE_BATCH,
        )
        return
    table = Verdict._meta.db_table
    with connection.cursor() as cursor:
        for start in range(0, len(ids), CALIBRATE_BATCH):
            cursor.execute(
                f"UPDATE {table} AS v SET confidence_calibrated = d.c "
                "FROM unnest(%s::bigint[], %s::float8[]) AS d(id, c) "
                "WHERE v.id = d.id AND v.confidence_calibrated IS DISTINCT FROM d.c",
                [ids[start : start + CALIBRATE_BATCH], values[start : start + CALIBRATE_BATCH]],
            )


CALIBRATE_BATCH = 50_000


def judge_run_calibrate_on_finish(*, run: JudgeRun) -> None:
    """Calibrate a run that has just finished; a failure is recorded in ``run.calibration``, never raised,
    so the run still finishes (the Recalibrate button or ``manage.py run_calibrate`` tries again)."""
    try:
        with transaction.atomic():  # a savepoint: a database error here leaves the caller's transaction usable
            judge_run_calibrate(run=run)
    except Exception as exc:  # the run must finish whatever went wrong here
        logger.exception("calibrating run %s failed", run.pk)
        error = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}"[:2000],
            "fitted_at": timezone.now().isoformat(),
        }
        JudgeRun.objects.filter(pk=run.pk).update(calibration=error)


def judge_run_recalibrate(*, run: JudgeRun, user=None) -> dict:
    """A person refits the run's recalibration map on the SME labels there are now (``judge_run_calibrate``).

    When the run is a tier of the gating policy, what the policy decides
    changes with its calibrated confidences, so this is a policy change:
    with a target and a risk the thresholds are chosen again on the new
    calibration (``gating_policy_compute``), else the tiers are kept; either
    way the change is logged with the policy before and after (who, when) and
    a re-gating is queued. Returns the calibration summary.
    """
    policy = gating_policy(run.project)
    tiers = list(policy.tiers.all()) if policy else []
    if not any(tier.run_id == run.pk for tier in tiers):
        return judge_run_calibrate(run=run)
    before = policy.snapshot()
    summary = judge_run_calibrate(run=run)
    if policy.target_agreement is not None and policy.risk is not None:
        gating_policy_compute(
            project=run.project,
            runs=[tier.run for tier in tiers],
            target=policy.target_agreement,
            risk=policy.risk,
            user=user,
            before=before,
        )
    else:
        gating_policy_set(
            project=run.project,
            tiers=[(tier.run, tier.threshold, tier.decides, tier.note) for tier in tiers],
            target=policy.target_agreement,
            risk=policy.risk,
            user=user,
            before=before,
        )
    return summary


class CertificationError(ValueError):
    """A target that cannot be certified: precision outside [0.5, 1) or δ outside [0.001, 0.5]."""


def certification_set(*, project: Project, target: float, delta: float, user=None) -> Certification:
    """Certify the project's accepted set for a lead's target (precision ≥ ``target`` with confidence
    1 - ``delta``, fractions) and record it as the project's certificate in force, logged.

    Runs ``judging.certify.project_certificate`` (Learn-then-Test on uniform-slice SME labels) now and stores a
    ``Certification`` (who, when, the target, threshold, n, bound, items certified, design of the labels used,
    gating policy label, the whole certificate, and in ``result``: ``"basis"``, the policy and calibrations it
    rests on, ``selectors.certification_basis``; ``"regate_generation"``, the re-gating it asked for) and asks for
    a re-gating: once that has run (``selectors.certification_applied``) the gate leaves a judge's accepts below
    the certified threshold (all of them when nothing is certified, or when the policy or a calibration changes
    later: ``selectors.certification_void``) pending for the SMEs (``gate_apply``); until then exports refuse.
    Raises CertificationError for a target or δ out of range.
    """
    if not 0.5 <= target <= 0.999:
        raise CertificationError(f"target precision {target}: 0.5 to 0.999 (no finite sample certifies 1)")
    if not 0.001 <= delta <= 0.5:
        raise CertificationError(f"delta {delta}: 0.001 to 0.5")
    with transaction.atomic():
        basis = certification_basis(project)
        found = certify.project_certificate(project, target=target, delta=delta)
        cert = found["certificate"]
        # The re-gating that applies it: until it has finished (``selectors.certification_applied``) the stored
        # decisions may still ship judge accepts it holds back, and exports refuse.
        generation = regate_request(project.pk)
        certification = Certification.objects.create(
            project=project,
            target=target,
            delta=delta,
            threshold=cert.threshold,
            method=cert.method,
            n=cert.n,
            n_labelled=cert.n_labelled,
            bound=cert.bound,
            certified=cert.certified,
            policy=found["policy"],
            design=found["design"],
            result={
                **cert.as_dict(),
                "not_covered": found["not_covered"],
                "basis": basis,
                "regate_generation": generation,
            },
            created_by=user,
        )
    logger.info(
        "certification %s of project %s by user %s: target %s delta %s threshold %s n %s bound %s certified %s "
        "re-gating %s",
        certification.pk,
        project.slug,
        getattr(user, "pk", None),
        target,
        delta,
        cert.threshold,
        cert.n,
        cert.bound,
        cert.certified,
        generation,
    )
    return certification
