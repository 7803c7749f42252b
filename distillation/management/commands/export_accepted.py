from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from distillation.export import iter_chat_jsonl


class Command(BaseCommand):
    help = "Write the project's accepted set as OpenAI chat fine-tuning JSONL."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("out", type=Path, help="output file")

    def handle(self, *args, project, out, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        lines = 0
        with out.open("wb") as fh:
            for line in iter_chat_jsonl(target):
                fh.write(line)
                lines += 1
        self.stdout.write(f"{lines} lines written to {out}")
