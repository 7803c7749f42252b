from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from judging.services import project_regate_now


class Command(BaseCommand):
    help = "Run the project's active label functions, then re-gate every item."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")

    def handle(self, *args, project, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        hits, counts = project_regate_now(project=target)  # here, not queued: the command waits for it
        self.stdout.write(f"{hits} rule hits; gate: {counts}")
