from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.text import slugify

from annotations.importers import ImportFormatError, detect_format, import_items
from annotations.models import Project
from annotations.services import items_imported


class Command(BaseCommand):
    help = "Import items (and prior human labels as SME reviews) from a JSONL or CSV file into a project."

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug; created if it does not exist")
        parser.add_argument("file", type=Path, help="a JSONL or CSV file of items")
        parser.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file name")
        parser.add_argument(
            "--label-field", default="human_label", help="field with a prior accept/reject label (default: human_label)"
        )
        parser.add_argument("--no-labels", action="store_true", help="do not import prior labels as SME reviews")
        parser.add_argument(
            "--no-gate",
            action="store_true",
            help="do not re-run the label functions and re-gate the project afterwards",
        )

    def handle(self, *args, project, file, format, label_field, no_labels, no_gate, **options):
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        try:
            fmt = format or detect_format(file.name)
        except ImportFormatError as exc:
            raise CommandError(str(exc)) from None
        target = Project.objects.filter(slug=project).first()  # an existing slug is used as it is
        if target is None:
            slug = slugify(project)[:50]
            if not slug:
                raise CommandError(f"{project!r} makes no slug: use letters, digits, - or _")
            target, created = Project.objects.get_or_create(slug=slug, defaults={"name": project})
            if created:
                self.stdout.write(f"created project {target.slug}")

        def progress(rows: int) -> None:
            self.stderr.write(f"\r{rows} rows read", ending="")
            self.stderr.flush()

        with file.open("rb") as stream:
            report = import_items(
                project=target,
                stream=stream,
                fmt=fmt,
                label_field=label_field,
                import_labels=not no_labels,
                progress=progress,
            )
        self.stderr.write("")
        for error in report.errors:
            self.stderr.write(f"{file}:{error.line}: {error.reason}")
        self.stdout.write(
            f"{report.created} items created, {report.existing} already present, "
            f"{report.labels} labels imported as SME reviews, {len(report.errors)} lines not stored, "
            f"{report.blank} blank lines skipped"
        )
        if report.created and not no_gate:
            where = "now" if settings.CELERY_TASK_ALWAYS_EAGER else "in the background (Celery worker)"
            self.stdout.write(f"re-gating {target.slug} {where}: label functions, then the gate")
            items_imported(target.pk)  # runs here, outside a transaction, when there is no broker
        elif report.created:
            self.stdout.write(f"not re-gated (--no-gate): run `manage.py apply_rules {target.slug}` when ready")
        if report.fatal:
            raise CommandError(f"{file}: {report.fatal}")
