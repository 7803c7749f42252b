from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from judging.backends import JudgeUnreachable
from judging.models import JudgeRun
from judging.pipeline import JudgeRunTimeout, judge_and_wait


class Command(BaseCommand):
    help = "Run the project's judge over all its items and wait for it (progress on stderr)."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds")

    def handle(self, *args, project, timeout, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            run = judge_and_wait(target, lambda message: self.stderr.write(message), timeout_s=timeout)
        except (JudgeRunTimeout, JudgeUnreachable) as exc:
            raise CommandError(str(exc)) from None
        if run.status != JudgeRun.Status.FINISHED:
            raise CommandError(f"judge run {run.pk} failed: {run.error}")
        self.stdout.write(
            f"run {run.pk} finished: {run.items_done} judged, {run.items_error} errors ({run.judge_label})"
        )
