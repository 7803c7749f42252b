import secrets
import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from annotations.models import Membership, Project
from distillation.pipeline import run_main_job


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class Command(BaseCommand):
    help = "Run the main job on a data file: import, sample, SME labels, judge, rules, gate, export, report."

    def add_arguments(self, parser):
        parser.add_argument("--data", type=Path, required=True, help="JSONL or CSV file with items")
        parser.add_argument("--out", type=Path, default=Path("out"))
        parser.add_argument("--fraction", type=float, default=0.2, help="share of items sampled for SMEs")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--target", type=float, default=0.9, help="precision the certificate must show")
        parser.add_argument("--delta", type=float, default=0.05, help="the certificate's error rate (1 - confidence)")
        parser.add_argument("--port", type=int, default=8000, help="where `make serve` will serve, for the curl shown")

    def handle(self, *args, data, out, fraction, seed, target, delta, port, **options):
        if not data.is_file():
            raise CommandError(f"{data}: no such file")
        tty = sys.stderr.isatty()

        def progress(message: str) -> None:
            self.stderr.write(("\r\033[K" if tty else "") + message, ending="" if tty else "\n")

        try:
            report = run_main_job(
                data=data, out=out, fraction=fraction, seed=seed, target=target, delta=delta, progress=progress
            )
        except (ValueError, RuntimeError) as exc:  # CertificationError is a ValueError
            raise CommandError(str(exc)) from None
        if tty:
            self.stderr.write("")
        f = report["funnel"]
        self.stdout.write(f"\nJudge: {report['judge']['name']}")
        if report["judge"]["status"] != "finished":
            self.stdout.write(
                f"The judge could not judge: {report['judge']['error']}. {report['waiting_for_smes']} items wait "
                "for SME review (pending, never exported); what the SMEs decided is exported."
            )
        self.stdout.write(
            f"Funnel: {f['imported']} imported -> {f['sme_reviewed']} SME reviewed -> {f['judged']} judged -> "
            f"{f['accepted_before_rules']} accepted by SME or judge -> {f['vetoed_accepts']} vetoed by rules -> "
            f"{f['accepted']} accepted  ({f['rejected']} rejected, {f['pending']} pending, of which "
            f"{report['held_back']['pending'] or 0} judge accepts the certificate holds back)"
        )
        for key, title in (
            ("sme_unseen", "SME labels the judge did not train on"),
            ("held_back_human_labels", "held-back human labels outside the SME sample"),
        ):
            a = report["agreement"][key]
            self.stdout.write(
                f"Judge vs {title} (n={a['n']}): agreement {_fmt(a['accuracy'])} "
                f"(always-the-commoner-label baseline {_fmt(a['majority_baseline'])}), "
                f"Cohen's kappa {_fmt(a['cohen_kappa'])}, precision(accept) {_fmt(a['precision_accept'])}, "
                f"recall(accept) {_fmt(a['recall_accept'])}"
            )
        for key, title in (("accepted", "Accepted set's precision"), ("rejected", "Rejected set's SME-accept share")):
            self.stdout.write(_estimate_line(title, report["estimate"][key]))
        self.stdout.write(_certificate_line(report["certificate"], report["project"]))
        self.stdout.write(
            f"Wrote {report['export']['lines']} lines to {report['export']['path']} and {out / 'report.json'}"
        )
        ts = report["training_set"]
        self.stdout.write(
            f"Training set {ts['id']} ({ts['format']}, {ts['duplicates']} duplicates left out), frozen and written:"
        )
        for split, file in ts["files"].items():
            self.stdout.write(f"  {split}: {file['rows']} rows in {file['path']}, sha256 {file['sha256']}")
        password, token = self._demo_user(report["project"])
        self.stdout.write(f"Browse as user 'demo', password '{password}' (reset on every demo run).")
        self.stdout.write(f"API token of user 'demo': {token}")
        url = f"http://127.0.0.1:{port}/api/projects/{report['project']}/training-sets/{ts['id']}/download/"
        self.stdout.write(
            "Download the training set over REST once the app is served (make serve):\n"
            f"  curl -H 'Authorization: Token {token}' -o train.jsonl '{url}?split=train'"
        )

    def _demo_user(self, slug: str) -> tuple[str, str]:
        """Reset the demo user's password; returns ``(password, API token)``."""
        password = secrets.token_urlsafe(9)
        user, _ = get_user_model().objects.get_or_create(username="demo")
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        Project.objects.get(slug=slug).members.add(user, through_defaults={"role": Membership.Role.LEAD})
        token, _ = Token.objects.get_or_create(user=user)
        return password, token.key


def _estimate_line(title: str, part: dict) -> str:
    """One line of ``estimate.accepted_set_precision``'s part: PPI++ and Wilson with n, or why there is none."""
    ppi, classical = part["ppi"], part["classical"]
    said = [f"{title} ({part['size']} items, {part['known']} with SME ground truth):"]
    if ppi:
        said.append(
            f"PPI++ {ppi['estimate']:.3f} [95 % {ppi['low']:.3f}-{ppi['high']:.3f}] "
            f"(n={ppi['n']} SME labels, N={ppi['N']} judged)"
        )
    if classical:
        said.append(
            f"SME labels alone (Wilson) {classical['estimate']:.3f} [95 % {classical['low']:.3f}-"
            f"{classical['high']:.3f}] (n={classical['n']})"
        )
    if part["whole_set"]:
        w = part["whole_set"]
        said.append(f"whole set {w['estimate']:.3f} [95 % {w['low']:.3f}-{w['high']:.3f}]")
    return said[0] + " " + "; ".join(said[1:] + [note.rstrip(".") for note in part["notes"]]) + "."


def _certificate_line(certification: dict | None, slug: str) -> str:
    """What the certificate in force says: the items certified with the bound and n, or why none; and what more SME
    labels would buy (``certify.Certificate.next``)."""
    if certification is None:
        return "Certificate: none (the judge could not judge, so there is nothing to certify)."
    result = certification["result"]
    wanted = (
        f"precision ≥ {certification['target']:.3f} with {1 - certification['delta']:.1%} confidence "
        f"(Learn-then-Test, {certification['n_labelled']} uniform-slice SME labels)"
    )
    if certification["threshold"] is None:
        said = f"Certificate for {wanted}: nothing certified. {result['reason']}"
    else:
        said = (
            f"Certificate for {wanted}: {certification['certified']} judge accepts certified at calibrated "
            f"P(accept) ≥ {certification['threshold']:.3f}; lower bound {certification['bound']:.3f} from the "
            f"n={certification['n']} of those labels at that threshold ({result['accepted_by_smes']} accepted)."
        )
    said += " Judge accepts not certified stay pending (queued for the SMEs), never exported."
    nxt = result.get("next")
    if nxt and nxt.get("more_labels") is not None and nxt["more_items"] > 0:
        said += (
            f" Next: {nxt['more_labels']} more uniform-slice SME labels at P(accept) ≥ {nxt['threshold']:.3f}, all "
            f"accepted, would certify {nxt['more_items']} more items (optimistic: rejects among them cost more)"
        )
        if not nxt.get("reachable", True):
            said += f"; but only {nxt['items']} unlabelled items are there: not reachable with these items"
        elif nxt.get("uniform_draw"):
            said += (
                f"; a uniform draw of about {nxt['uniform_draw']} items brings that many there "
                f"(manage.py sample_items {slug} --n {nxt['uniform_draw']} --design uniform)"
            )
        said += "."
    return said
