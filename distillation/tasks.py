"""Celery task of the distillation app: building a training-set snapshot. It takes an id, re-fetches, calls
``training_sets.training_set_build``, and is idempotent."""

from celery import shared_task

from distillation import training_sets
from distillation.models import TrainingSet


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
