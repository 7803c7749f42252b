from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from annotations.services import sample_for_review


class Command(BaseCommand):
    help = "Put a seeded random sample of a project's items into the SME review queue."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        size = parser.add_mutually_exclusive_group(required=True)
        size.add_argument("--n", type=int, help="queue this many items in all")
        size.add_argument("--fraction", type=float, help="queue this fraction of all items")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, project, n, fraction, seed, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        try:
            added = sample_for_review(project=target, n=n, fraction=fraction, seed=seed)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{added} items added to the SME queue (seed {seed})")
