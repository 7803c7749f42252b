import time

from django.core.management.base import BaseCommand, CommandError

from judging.models import JudgeRun
from judging.services import judge_run_recalibrate


class Command(BaseCommand):
    help = (
        "Refit a judge run's recalibration map on the SME labels there are now and rewrite its verdicts' "
        "calibrated confidence (a person's action: a gating policy reading them may decide differently)."
    )

    def add_arguments(self, parser):
        parser.add_argument("run_id", type=int, help="the judge run's id")

    def handle(self, *args, run_id, **options):
        run = JudgeRun.objects.select_related("project").filter(pk=run_id).first()
        if run is None:
            raise CommandError(f"no judge run {run_id}")
        if run.status in (JudgeRun.Status.QUEUED, JudgeRun.Status.RUNNING):
            raise CommandError(f"run {run_id} is still {run.status}: it is calibrated when it finishes")
        self.stdout.write(f"calibrating run {run_id} ({run.judge_label}) on the SME labels of {run.project.slug}…")
        started = time.perf_counter()
        summary = judge_run_recalibrate(run=run)
        took = time.perf_counter() - started
        if summary["status"] != "calibrated":
            raise CommandError(f"run {run_id}: nothing calibrated: {summary['reason']}")
        self.stdout.write(
            f"run {run_id}: {summary['method']} map on {summary['n_labels']} SME labels "
            f"({summary['n_accept']} accepts, {summary['n_reject']} rejects, {summary['folds']} folds); "
            f"{summary['n_calibrated']} verdicts calibrated, {summary['n_without_confidence']} without a "
            f"confidence left as they are, in {took:.2f} s"
        )
