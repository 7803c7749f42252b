"""Celery tasks of the distillation app: building a training-set snapshot (``training_sets.training_set_build``)
and teacher runs (``teacher_runs``). They take ids, re-fetch, call services, and are idempotent."""

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from distillation import teacher, teacher_runs, training_sets
from distillation.models import TeacherRun, TeacherWork, TrainingSet
from judging.tasks import MAX_TASKS_PER_RUN
from larry_web import work


# Registered under the name it had in the judging app, so that messages queued before the move still run.
@shared_task(name="judging.tasks.build_training_set", bind=True, acks_late=True, max_retries=None)
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


@shared_task(acks_late=True, reject_on_worker_lost=True)
def start_teacher_run(run_id: int) -> None:
    """Start (or, when redelivered or resumed, go on with) a teacher run: queue ``teacher_chunk`` tasks for its
    work rows (one per ``LARRY_JUDGE_CHUNK_SIZE`` rows, at most ``MAX_TASKS_PER_RUN``), or finish it when none
    is left."""
    TeacherRun.objects.filter(pk=run_id, status=TeacherRun.Status.QUEUED).update(
        status=TeacherRun.Status.RUNNING, started_at=timezone.now()
    )
    run = TeacherRun.objects.filter(pk=run_id).first()
    if run is None or run.status != TeacherRun.Status.RUNNING:
        return
    rows = TeacherWork.objects.filter(run=run).count()
    TeacherRun.objects.filter(pk=run.pk).update(progress_at=timezone.now())
    if not rows:
        teacher_runs.teacher_run_finish_if_complete(run_id=run.pk)
        return
    for _ in range(max(1, min(MAX_TASKS_PER_RUN, -(-rows // settings.LARRY_JUDGE_CHUNK_SIZE)))):
        teacher_chunk.delay(run.pk)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def teacher_chunk(run_id: int) -> None:
    """Ask the teacher for the run's work rows until none is left (or the chunk's deadline), then maybe finish.

    The same window, deadlines, leases and heartbeat as a judge chunk (``judging.tasks.judge_chunk``): it
    starts no request after ``LARRY_JUDGE_CHUNK_DEADLINE_S``, queues itself again when work is left, and a
    cancelled run's leased items go back unasked. The key is read from the settings now, never stored, and
    sent only to the URL it was set for (``larry_web.work.run_api_key``: a run whose teacher moved fails).
    """
    run = TeacherRun.objects.select_related("project").get(pk=run_id)
    if run.status != TeacherRun.Status.RUNNING:
        return
    try:
        now = teacher.teacher_config_for(run.project)
    except teacher.NoTeacher as exc:
        teacher_runs.teacher_run_fail(run_id=run.pk, error=str(exc))
        return
    try:
        key = work.run_api_key(
            run_url=run.base_url,
            run_config=run.config,
            current_url=now.base_url,
            current_key=now.api_key,
            who="teacher",
        )
    except work.EndpointMoved as exc:
        teacher_runs.teacher_run_fail(run_id=run.pk, error=str(exc))
        return
    config = teacher.TeacherConfig(run.base_url, run.model, key)
    source = work.RunWork(
        TeacherWork,
        TeacherRun,
        run,
        work.worker_name(),
        lease=teacher_runs.teacher_work_lease,
        store=teacher_runs.answers_store,
    )
    outcome = teacher.teach_window(
        config,
        source,
        run_settings=run.config,
        max_in_flight=run.config.get("max_in_flight", now.max_in_flight),
        deadline_s=settings.LARRY_JUDGE_CHUNK_DEADLINE_S,
        grace_s=settings.LARRY_JUDGE_CHUNK_GRACE_S,
        renew_s=settings.LARRY_JUDGE_LEASE_S / 3,
    )
    work.chunk_end(
        TeacherWork,
        TeacherRun,
        run_id=run_id,
        outcome=outcome,
        again=lambda: teacher_chunk.delay(run_id),
        finish=teacher_runs.teacher_run_finish_if_complete,
    )
