"""Start a judge run and wait for it: what ``run_judge`` and the main job (``distillation.pipeline``) do."""

import time
from collections.abc import Callable

from annotations.models import Project
from judging.models import JudgeRun, Verdict
from judging.services import (
    escalation_run_create,
    judge_endpoint_check,
    judge_run_create,
    judge_run_revive_if_stalled,
)

Progress = Callable[[str], None]


class JudgeRunTimeout(RuntimeError):
    """The run did not finish in time; it goes on (or waits for a worker) regardless."""


def judge_and_wait(
    project: Project,
    progress: Progress,
    *,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
    endpoint=None,
    escalate: bool = False,
    local: bool = False,
    learn_from: JudgeRun | None = None,
) -> JudgeRun:
    """Start a judge run and wait for it: in-process without a broker, else by polling its row.

    ``endpoint`` (a JudgeEndpoint of the project; None: its default judge)
    judges; with ``escalate`` only the items the gating policy in force leaves
    undecided (``services.escalation_run_create``, which raises PolicyError
    without a policy or with nothing to escalate). ``local`` and
    ``learn_from`` are ``services.judge_run_create``'s (the local classifier;
    distilled from a run's verdicts; LearnFromError). Must be called outside a
    transaction (the run is enqueued on commit). Raises backends.JudgeUnreachable,
    before creating a run, when the judge endpoint does not answer. Raises
    JudgeRunTimeout after ``timeout_s`` seconds (None: wait for ever).
    """
    if not local and learn_from is None:
        judge_endpoint_check(project=project, endpoint=endpoint)  # raises backends.JudgeUnreachable
    if escalate:
        run = escalation_run_create(project=project, endpoint=endpoint)
    else:
        run = judge_run_create(project=project, endpoint=endpoint, local=local, learn_from=learn_from)
    started = time.monotonic()
    while True:
        judge_run_revive_if_stalled(run_id=run.pk)  # a run whose workers died is queued again
        run.refresh_from_db()
        done = Verdict.objects.filter(run=run).count()
        waited = time.monotonic() - started
        hint = " - is a Celery worker running?" if run.status == JudgeRun.Status.QUEUED and waited > 10 else ""
        progress(f"judging: {done}/{run.items_total} items ({run.status}){hint}")
        if run.status in (JudgeRun.Status.FINISHED, JudgeRun.Status.FAILED):
            return run
        if timeout_s is not None and waited > timeout_s:
            raise JudgeRunTimeout(f"judge run {run.pk} is still {run.status} after {timeout_s:.0f} s")
        time.sleep(poll_s)
