from django.core.management.base import BaseCommand, CommandError

from annotations.models import Project
from judging.backends import JudgeUnreachable
from judging.models import JudgeEndpoint, JudgeRun
from judging.runs import JudgeRunTimeout, judge_and_wait
from judging.services import LearnFromError, PolicyError, gating_policy_set


class Command(BaseCommand):
    help = (
        "Run the project's judge over all its items (or, with --escalate, over those the gating policy leaves "
        "undecided) and wait for it (progress on stderr)."
    )

    def add_arguments(self, parser):
        parser.add_argument("project", help="project slug")
        parser.add_argument("--timeout", type=float, help="give up waiting after this many seconds")
        parser.add_argument(
            "--use",
            action="store_true",
            help="once it has finished, make the run the project's gating policy (logged; without it the run "
            "decides nothing until a lead chooses it on the gating policy page)",
        )
        parser.add_argument(
            "--local",
            action="store_true",
            help="judge with the local classifier (trained on the SME labels), whatever the project's judge",
        )
        parser.add_argument(
            "--learn-from",
            type=int,
            metavar="RUN_ID",
            help="the local classifier also learns from this finished LLM run's verdicts (distillation; an SME "
            "label wins over the run's verdict on the same item); implies --local",
        )

        parser.add_argument(
            "--endpoint", help="the name of the project's judge endpoint to use (default: its default judge)"
        )
        parser.add_argument(
            "--escalate",
            action="store_true",
            help="judge only the items the gating policy in force leaves undecided (the next tier of a cascade)",
        )

    def handle(self, *args, project, timeout, use, endpoint, escalate, local, learn_from, **options):
        target = Project.objects.filter(slug=project).first()
        if target is None:
            raise CommandError(f"no project {project!r}")
        chosen = None
        if endpoint is not None:
            chosen = JudgeEndpoint.objects.filter(project=target, name=endpoint).first()
            if chosen is None:
                names = ", ".join(JudgeEndpoint.objects.filter(project=target).values_list("name", flat=True))
                raise CommandError(f"no judge endpoint {endpoint!r} in {project} (it has: {names or 'none'})")
        if use and escalate:
            raise CommandError("--use makes one run the whole policy; an escalated run joins a cascade instead")
        teacher = None
        if learn_from is not None:
            teacher = JudgeRun.objects.filter(pk=learn_from, project=target).first()
            if teacher is None:
                raise CommandError(f"no run {learn_from} in project {project!r}")
        try:
            run = judge_and_wait(
                target,
                lambda message: self.stderr.write(message),
                timeout_s=timeout,
                endpoint=chosen,
                escalate=escalate,
                local=local,
                learn_from=teacher,
            )
        except PolicyError as exc:
            raise CommandError(str(exc)) from None
        except (JudgeRunTimeout, JudgeUnreachable, LearnFromError) as exc:
            raise CommandError(str(exc)) from None
        if run.status != JudgeRun.Status.FINISHED:
            raise CommandError(f"judge run {run.pk} failed: {run.error}")
        self.stdout.write(
            f"run {run.pk} finished: {run.items_done} judged, {run.items_error} errors ({run.judge_label})"
        )
        if run.learned_from:
            self.stdout.write(f"it learned from {run.learned_from}")
        if use:
            gating_policy_set(project=target, tiers=[(run, None)])
            self.stdout.write(f"run {run.pk} is now the gating policy; re-gating queued")
        else:
            self.stdout.write("it decides nothing until chosen: run_judge --use, or the gating policy page")
