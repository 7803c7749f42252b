import argparse

from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from distillation.models import TeacherRun
from distillation.teacher import NoTeacher, TeacherUnreachable
from distillation.teacher_runs import TeacherRunTimeout, teacher_and_wait, teacher_run_report


class Command(BaseCommand):
    help = (
        "Have the project's teacher (Sensei Larry) write a candidate response for chosen items and wait for it "
        "(progress on stderr). Its answers then go through the gate like any item: rules at once, then (with "
        "--judge, the default) the gating policy's judges judge them and the gate decides; SMEs review a sample."
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
        parser.add_argument(
            "--judge",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="when the run is done, have the gating policy's judges judge its answers and wait for them "
            "(default); --no-judge leaves them pending until a judge run covers them",
        )
        parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds")

    def handle(self, *args, project, items, judge, timeout, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            run = teacher_and_wait(target, items, lambda line: self.stderr.write(line), timeout_s=timeout, judge=judge)
        except (NoTeacher, TeacherUnreachable, TeacherRunTimeout, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if run.status != TeacherRun.Status.FINISHED:
            raise CommandError(f"teacher run {run.pk} {run.status}: {run.error}")
        report = teacher_run_report(run)
        failures = ", ".join(f"{n} {name}" for name, n in report["failures"].items()) or "none"
        self.stdout.write(
            f"teacher run {run.pk} finished: {run.answers_written} answers written by {run.model}, "
            f"{run.answers_failed} not stored ({failures}); cost {report['cost']:.4f}"
        )
        if not judge:
            self.stdout.write("its answers wait for the gate: a judge run decides them (run_judge SLUG --use)")
            return
        run.refresh_from_db()
        judge_runs = ", ".join(str(j.pk) for j in run.judge_runs.all())
        if not judge_runs:
            self.stdout.write(f"its answers were not judged: {run.judge_note or 'no answer written'}")
            return
        report = teacher_run_report(run)
        self.stdout.write(
            f"judged by run(s) {judge_runs}: {report['accepted']} accepted, {report['rejected']} rejected "
            f"({report['vetoed']} vetoed by rules), {report['pending']} pending"
        )
