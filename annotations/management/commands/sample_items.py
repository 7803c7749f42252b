from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project, SampleDraw
from annotations.sampling import DEFAULT_UNIFORM_SHARE, STRATA_FIELDS, SamplingError, sample_draw
from annotations.services import sample_for_review


class Command(BaseCommand):
    help = (
        "Put a seeded sample of a project's items into the SME review queue, recorded with each item's inclusion "
        "probability. Without --design: a uniform sample topping the queue up to --n (or --fraction) items in all. "
        "With --design: draw --n more items (or --fraction of all items) by that design."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        size = parser.add_mutually_exclusive_group(required=True)
        size.add_argument("--n", type=int, help="how many items")
        size.add_argument("--fraction", type=float, help="that fraction of all items")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--design", choices=SampleDraw.Design.values, help="a recorded sampling design")
        parser.add_argument("--strata", choices=STRATA_FIELDS, help="the field a stratified draw stratifies by")
        parser.add_argument("--allocation", choices=SampleDraw.Allocation.values, default="proportional")
        parser.add_argument(
            "--uniform-share",
            type=float,
            default=DEFAULT_UNIFORM_SHARE,
            help="share of a confidence-weighted draw taken uniformly",
        )

    def handle(self, *args, project, n, fraction, seed, design, strata, allocation, uniform_share, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        if design is None:
            try:
                added = sample_for_review(project=target, n=n, fraction=fraction, seed=seed)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"{added} items added to the SME queue (seed {seed})")
            return
        if fraction is not None:
            if not 0 < fraction <= 1:
                raise CommandError(f"fraction must be in (0, 1], got {fraction}")
            n = max(1, round(fraction * target.items.count()))
        try:
            draw = sample_draw(
                project=target,
                size=n,
                design=design,
                seed=seed,
                strata=strata,
                allocation=allocation,
                uniform_share=uniform_share,
            )
        except SamplingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"draw {draw.pk}: {draw.drawn} of {draw.population} items added to the SME queue "
            f"({draw.get_design_display()}, seed {seed})"
        )
