from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from distillation.models import TeacherRun
from distillation.teacher import NoTeacher
from distillation.teacher_runs import TeacherRunTimeout, teacher_and_wait, teacher_run_report


class Command(BaseCommand):
    help = (
        "Have the project's teacher (Sensei Larry) write a candidate response for chosen items and wait for it "
        "(progress on stderr). Its answers then go through the gate like any item: rules at once, a judge run "
        "(e.g. run_judge SLUG --use) and SMEs decide them."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument(
            "--items",
            choices=["rejected", "all", "missing"],
            default="rejected",
            help="rejected: the items the gate rejected (default); all: every item; missing: prompts imported "
            "without a response",
        )
        parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds")

    def handle(self, *args, project, items, timeout, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            run = teacher_and_wait(target, items, lambda line: self.stderr.write(line), timeout_s=timeout)
        except (NoTeacher, TeacherRunTimeout) as exc:
            raise CommandError(str(exc)) from None
        if run.status != TeacherRun.Status.FINISHED:
            raise CommandError(f"teacher run {run.pk} {run.status}: {run.error}")
        report = teacher_run_report(run)
        failures = ", ".join(f"{n} {name}" for name, n in report["failures"].items()) or "none"
        self.stdout.write(
            f"teacher run {run.pk} finished: {run.answers_written} answers written by {run.model}, "
            f"{run.answers_failed} not stored ({failures}); cost {report['cost']:.4f}"
        )
        self.stdout.write("its answers wait for the gate: a judge run decides them (run_judge SLUG --use)")
