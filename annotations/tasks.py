"""Celery tasks of the annotations app: imports uploaded in the browser, sample draws made in the background.
Tasks take ids and re-fetch."""

from celery import shared_task
from django.utils import timezone

from annotations.importers import import_items
from annotations.models import ImportJob
from annotations.sampling import sample_draw_run
from annotations.services import items_imported


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_import_job(job_id: int) -> None:
    """Import the job's file, writing progress after every batch and the report at the end.

    Claimed with a conditional UPDATE, so one worker runs it. A job found
    ``running`` is one whose worker died (``acks_late`` delivers it again, and
    ``reject_on_worker_lost`` when only the pool process was killed): it
    is run again from the start, which is safe since items already stored
    are skipped (they then count as existing). Any error ends the job as
    ``failed`` with the error on the row. When items were created (even by
    a job that stopped at a fatal fault), or an error may have left some
    stored, the project is re-gated afterwards (``services.items_imported``).
    """
    # A run again after a worker died: what the dead run stored counts as existing now, not created, and was
    # never re-gated (that comes at the end): re-gate afterwards whatever this run creates.
    again = ImportJob.objects.filter(pk=job_id, status=ImportJob.Status.RUNNING).exists()
    claimed = ImportJob.objects.filter(
        pk=job_id, status__in=[ImportJob.Status.QUEUED, ImportJob.Status.RUNNING]
    ).update(status=ImportJob.Status.RUNNING, started_at=timezone.now(), rows_read=0, bytes_read=0)
    if not claimed:
        return
    job = ImportJob.objects.select_related("project").get(pk=job_id)
    try:
        with job.file.open("rb") as stream:

            def progress(rows: int) -> None:
                ImportJob.objects.filter(pk=job_id).update(rows_read=rows, bytes_read=stream.tell())

            report = import_items(
                project=job.project,
                stream=stream,
                fmt=job.format,
                label_field=job.label_field,
                import_labels=job.import_labels,
                progress=progress,
            )
            bytes_read = stream.tell()
    except Exception as exc:
        ImportJob.objects.filter(pk=job_id).update(
            status=ImportJob.Status.FAILED, error=f"{type(exc).__name__}: {exc}"[:2000], finished_at=timezone.now()
        )
        items_imported(job.project_id)  # batches stored before the error count too
        raise
    ImportJob.objects.filter(pk=job_id).update(
        status=ImportJob.Status.FAILED if report.fatal else ImportJob.Status.DONE,
        error=report.fatal,
        report=report.as_dict(),
        rows_read=report.rows,
        bytes_read=job.bytes_total if not report.fatal else bytes_read,
        finished_at=timezone.now(),
    )
    if report.created or again:
        items_imported(job.project_id)


@shared_task(acks_late=True, reject_on_worker_lost=True)
def run_sample_draw(draw_id: int) -> None:
    """Make a draw recorded by ``annotations.sampling.sample_draw(later=True)`` (``sample_draw_run``): done with every
    item queued, or failed with the error and nothing recorded. A draw already done or failed is left alone; one
    whose worker process was killed is delivered again (``reject_on_worker_lost``) and made from the start."""
    sample_draw_run(draw_id)
