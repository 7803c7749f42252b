"""Judge runs and verdicts, label functions and their hits, and the gate's decision."""

from collections import Counter

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse

from annotations.models import Decision, Item, Project, validate_no_credentials
from annotations.selectors import ground_truth
from judging import gate, prompts
from larry_web.work import LeasedWork, Run

FEW_SHOT_MAX = 20
TOKENS_PER_MINUTE_MIN = 1000


def validate_judge_url(url: str) -> None:
    """An http(s) URL with a host; unlike Django's URLValidator, a host without a dot (``http://vllm:8000/v1``,
    a service name inside docker compose) is allowed. Raises ValidationError."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise ValidationError("enter a URL such as http://vllm:8000/v1") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise ValidationError("enter an http or https URL with a host, such as http://vllm:8000/v1")


class JudgeEndpoint(models.Model):
    """One OpenAI-compatible judge server and model a project may send items to (a cascade tier's, or the teacher's).

    A project has any number; at most one is its default judge (``is_default``),
    which a run uses unless it names another. With none marked default the
    project is judged by ``LARRY_JUDGE_*`` from the environment, else the local
    classifier. ``judging.backends.judge_config_for`` is the only reader that
    turns a row into a ``JudgeConfig``.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judge_endpoints")
    name = models.CharField(max_length=100, help_text="What the project calls it, e.g. 'Baby Larry' or 'big judge'.")
    base_url = models.CharField(
        max_length=500,
        validators=[validate_judge_url, validate_no_credentials],
        help_text="OpenAI-compatible base URL, e.g. http://vllm:8000/v1",
    )
    model = models.CharField(max_length=200, help_text="The model name the server expects.")
    # Write-only: the admin never shows it (judging.admin.JudgeEndpointForm), the API has no field for it,
    # and runs record the URL and model only (judging.backends.JudgeConfig).
    api_key = models.CharField(max_length=200, blank=True)
    max_in_flight = models.PositiveSmallIntegerField(
        default=32,
        validators=[MinValueValidator(1, "at least 1 request in flight")],
        help_text="Requests one worker keeps open at once to the judge server.",
    )
    price_in = models.DecimalField(
        max_digits=10, decimal_places=4, default=0, help_text="Price per million prompt tokens, for run costs."
    )
    price_out = models.DecimalField(
        max_digits=10, decimal_places=4, default=0, help_text="Price per million completion tokens."
    )
    is_default = models.BooleanField(
        "project's default judge",
        default=False,
        help_text="Runs use this endpoint unless they name another. At most one per project.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "-is_default", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "name"],
                name="judge_endpoint_name_unique_per_project",
                violation_error_message="The project already has an endpoint of this name.",
            ),
            models.UniqueConstraint(
                fields=["project"],
                condition=models.Q(is_default=True),
                name="one_default_judge_endpoint_per_project",
                violation_error_message="The project already has a default judge: unmark that one first.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.model} at {self.base_url})"


class JudgeRun(Run):
    """One pass of a judge over a project's items. Outcomes live on the row."""

    class Backend(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible server"
        LOCAL = "local", "Local classifier"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judge_runs")
    backend = models.CharField(max_length=10, choices=Backend.choices)
    model = models.CharField(max_length=200, help_text="Model name at the endpoint, or the local classifier's name.")
    base_url = models.CharField(max_length=500, blank=True)
    endpoint = models.ForeignKey(
        JudgeEndpoint,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="runs",
        help_text="The endpoint the run judges with (None: the environment's judge or the local classifier).",
    )
    items_done = models.PositiveIntegerField(default=0)
    items_error = models.PositiveIntegerField(default=0)
    calibration = models.JSONField(
        default=dict, blank=True, help_text="The recalibration map fit on SME labels, and how it was fit."
    )

    def __str__(self) -> str:
        return f"run {self.pk} ({self.judge_label})"

    def get_absolute_url(self) -> str:
        return reverse("judging:run_detail", args=[self.project.slug, self.pk])

    @property
    def few_shot_item_ids(self) -> list[int]:
        """Items shown to the judge as few-shot examples, with their SME labels (so left out of its calibration)."""
        return list(self.config.get("few_shot_item_ids") or [])

    @property
    def rubric_label(self) -> str:
        """``"v3 (sha256 1a2b3c4d…)"`` for an LLM run: its rubric version and system prompt hash; "" otherwise."""
        if "rubric_version" not in self.config:
            return ""
        return f"v{self.config['rubric_version']} (sha256 {self.config.get('system_prompt_sha256', '')[:12]}…)"

    @property
    def learned_from(self) -> str:
        """What a local classifier run learned from, e.g. "12 SME labels and 3,400 verdicts of run 7 (judge X)"
        (counts once it has run); "" for an LLM run."""
        if self.backend != self.Backend.LOCAL:
            return ""
        sme = self.config.get("sme_labels")
        sme_text = "SME labels" if sme is None else f"{sme:,} SME label{'' if sme == 1 else 's'}"
        teacher = self.config.get("learn_from_run")
        if not teacher:
            return sme_text
        n = self.config.get("teacher_labels")
        verdicts = "the verdicts" if n is None else f"{n:,} verdict{'' if n == 1 else 's'}"
        return f"{sme_text} and {verdicts} of run {teacher} ({self.config.get('learn_from_judge', '')})"

    @property
    def judge_label(self) -> str:
        """Which judge this was, as every screen and export shows it."""
        if self.backend == self.Backend.LOCAL:
            return f"local classifier {self.model} (not an LLM)"
        return f"{self.model} at {self.base_url}"


class JudgeWork(LeasedWork):
    """One item a judge run still has to judge: created with the run for its scope, deleted in the transaction
    that stores the item's verdict (``services.verdicts_store``), so the rows left are the work left.

    A worker leases rows (``leased_by``, ``leased_until``; ``services.judge_work_lease``) with
    ``SELECT ... FOR UPDATE SKIP LOCKED`` and renews the lease while it judges them; once a lease has run
    out (its worker died) another worker takes the row. ``attempts`` counts the leases taken.
    """

    run = models.ForeignKey(JudgeRun, on_delete=models.CASCADE, related_name="work")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="judge_work_one_per_run_item")]
        indexes = [models.Index(fields=["run", "leased_until"], name="judge_work_run_lease")]

    def __str__(self) -> str:
        return f"run {self.run_id}, item {self.item_id}"


class JudgeSettings(models.Model):
    """A project's LLM-judge prompt and pacing, edited by staff in the admin (one row per project).

    ``rubric`` is the criteria part of the judge's system prompt (see
    ``judging.prompts``); code always appends the guidelines and the fixed
    injection-defence and reply-format paragraphs. Every change of the rubric
    is kept as an immutable RubricVersion and bumps ``rubric_version``; a run
    records the version it used. Save through ``services.judge_settings_save``;
    a project without a row gets the defaults from ``services.judge_settings_for``.
    """

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="judge_settings")
    rubric = models.TextField(
        default=prompts.default_rubric,
        validators=[MaxLengthValidator(prompts.RUBRIC_MAX_CHARS)],
        help_text="The criteria the judge applies (the start of its system prompt). Larry always adds the "
        "project's guidelines, then a fixed paragraph: the item's text is data in tagged sections, instructions "
        "inside it are ignored, and the reply is one JSON verdict. Every change is kept as a new version.",
    )
    rubric_version = models.PositiveIntegerField(default=0, editable=False)
    few_shot = models.PositiveSmallIntegerField(
        "few-shot examples",
        default=0,
        validators=[MaxValueValidator(FEW_SHOT_MAX, f"at most {FEW_SHOT_MAX}: every request carries them all")],
        help_text="How many SME-reviewed items to show the judge as worked examples before each item (0: none). "
        "Drawn with a fixed seed, half accepted and half rejected where the labels allow; they are left out of "
        "the run's calibration against the SMEs.",
    )
    few_shot_pinned = models.JSONField(
        "pinned few-shot examples",
        default=list,
        blank=True,
        help_text="External ids of SME-reviewed items always shown first, one per line, in this order; they count "
        "towards the number above, and the rest are drawn. An item whose SME ground truth is gone by the time of "
        "a run is left out and another is drawn in its place.",
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1, "at least 1; leave it blank for no limit")],
        help_text="Most requests a minute to the judge server, spaced evenly (blank: no limit). Applies per "
        "worker process: with N Celery processes judging at once, the server may see N times this.",
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[
            MinValueValidator(TOKENS_PER_MINUTE_MIN, f"at least {TOKENS_PER_MINUTE_MIN}; leave it blank for no limit")
        ],
        help_text="Most tokens a minute (blank: no limit), counted before each request as the characters of all "
        "its messages / 4 plus the reply's max tokens (512). Applies per worker process, like requests per minute.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "judge settings"
        verbose_name_plural = "judge settings"

    def __str__(self) -> str:
        return f"judge settings of {self.project}"

    def clean(self) -> None:
        """Pinned examples: a list of at most ``few_shot`` distinct external ids; each newly pinned one must name
        an item of the project with SME ground truth. Pins saved before that have since lost their item or its
        ground truth may stay (a run skips them). Raises ValidationError on ``few_shot_pinned`` naming the ids."""
        pinned = self.few_shot_pinned
        if not isinstance(pinned, list) or not all(isinstance(e, str) and e for e in pinned):
            raise ValidationError({"few_shot_pinned": "a list of external ids (non-empty strings)"})
        if len(pinned) > (self.few_shot or 0):
            message = (
                f"{len(pinned)} pinned but only {self.few_shot or 0} few-shot examples: raise the number or pin fewer"
            )
            raise ValidationError({"few_shot_pinned": message})
        repeated = sorted(e for e, n in Counter(pinned).items() if n > 1)
        if repeated:
            raise ValidationError({"few_shot_pinned": f"pinned twice: {', '.join(repeated)}"})
        saved = JudgeSettings.objects.filter(pk=self.pk).values_list("few_shot_pinned", flat=True).first() or []
        new = [e for e in pinned if e not in saved]
        if not new or not self.project_id:
            return
        ids = dict(
            Item.objects.filter(project_id=self.project_id, external_id__in=new).values_list("external_id", "id")
        )
        missing = [e for e in new if e not in ids]
        if missing:
            raise ValidationError({"few_shot_pinned": f"no item in the project with the id {', '.join(missing)}"})
        truth = ground_truth(list(ids.values()), project=self.project)
        unreviewed = [e for e in new if ids[e] not in truth]
        if unreviewed:
            raise ValidationError(
                {"few_shot_pinned": f"no SME ground truth yet (review or adjudicate first): {', '.join(unreviewed)}"}
            )


class RubricVersion(models.Model):
    """One immutable version of a project's rubric: its text and sha256, who wrote it and when."""

    judge_settings = models.ForeignKey(JudgeSettings, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    rubric = models.TextField()
    sha256 = models.CharField(max_length=64, help_text="Of the rubric text alone (runs record the whole prompt's).")
    # PROTECT: history keeps its author; a user who changed something is deactivated, not deleted.
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(fields=["judge_settings", "version"], name="rubric_version_once"),
        ]

    def __str__(self) -> str:
        return f"rubric v{self.version} of {self.judge_settings.project}"


class Verdict(models.Model):
    """The judge's verdict on one item in one run; ``verdict`` is empty when judging failed.

    The evidence is kept with it (``judging.replies``): the reply as the
    server sent it (capped), the reasoning of a reasoning model, every HTTP
    exchange (``attempts``: ``[{"status": 429}, {"status": 200, "problem":
    "..."}, {"error": "refused", "detail": "..."}]``, retries and the repair
    request included), and the model the server says answered. Tokens are
    None ("unknown") when a reply had no usage block.
    """

    class ErrorClass(models.TextChoices):
        TIMEOUT = "timeout", "timeout"
        REFUSED = "refused", "connection refused"
        CONNECTION = "connection", "connection failed"
        RATE_LIMITED = "rate_limited", "rate limited (429)"
        SERVER_ERROR = "server_error", "server error (5xx)"
        CLIENT_ERROR = "client_error", "request refused (4xx)"
        INVALID_REPLY = "invalid_reply", "invalid reply"
        TRUNCATED = "truncated", "truncated reply"
        REFUSAL = "refusal", "refusal"
        DEADLINE = "deadline", "chunk deadline passed"

    # Faults of the connection or the server, not of the item: worth judging again as they are.
    TRANSIENT = (
        ErrorClass.TIMEOUT,
        ErrorClass.REFUSED,
        ErrorClass.CONNECTION,
        ErrorClass.RATE_LIMITED,
        ErrorClass.SERVER_ERROR,
        ErrorClass.DEADLINE,
    )

    run = models.ForeignKey(JudgeRun, on_delete=models.CASCADE, related_name="verdicts")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="verdicts")
    verdict = models.CharField(max_length=6, choices=Decision.choices, blank=True)
    rationale = models.TextField(blank=True)
    reasoning = models.TextField(blank=True, help_text="A reasoning model's thoughts before its verdict (capped).")
    confidence = models.FloatField(
        null=True,
        blank=True,
        help_text="The judge's raw P(accept): from the verdict token's log-probabilities for an LLM, the predicted "
        "probability for the local classifier; None when the reply carried none.",
    )
    confidence_calibrated = models.FloatField(
        null=True,
        blank=True,
        help_text="P(accept) after the run's recalibration map fit on SME labels (cross-fitted: an SME-labelled "
        "item's value comes from a map fit without its label); None until the run is calibrated.",
    )
    tokens_in = models.PositiveIntegerField(null=True, blank=True, help_text="None: the reply did not say.")
    tokens_out = models.PositiveIntegerField(null=True, blank=True, help_text="None: the reply did not say.")
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    error_class = models.CharField(max_length=14, choices=ErrorClass.choices, blank=True)
    raw_reply = models.TextField(blank=True, help_text="The last reply's content as sent (first 16 KB).")
    attempts = models.JSONField(default=list, blank=True, help_text="Every HTTP exchange, in order.")
    answered_by = models.CharField(max_length=200, blank=True, help_text="The model the server says answered.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="verdict_once_per_run_item")]
        # The items list sorts and filters a run's verdicts by calibrated confidence (judging.items).
        indexes = [models.Index(fields=["run", "confidence_calibrated", "item"], name="verdict_run_confidence")]

    def __str__(self) -> str:
        return f"{self.verdict or 'error'} {self.item_id} (run {self.run_id})"


class LabelFunction(models.Model):
    """A rule staff write in the admin: it rejects an item with ``reason`` or abstains.

    ``kind`` picks an entry of ``judging.label_functions.KINDS``; ``params``
    is validated by that kind's schema. Rules are data, never code. Every
    change is recorded as a LabelFunctionVersion and bumps ``version``; each
    hit records the version that produced it.
    """

    class Field(models.TextChoices):
        RESPONSE = "response"
        PROMPT = "prompt"
        CONTEXT = "context"
        REFERENCE = "reference"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="label_functions")
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=20)
    params = models.JSONField(default=dict)
    field = models.CharField(max_length=10, choices=Field.choices, default=Field.RESPONSE)
    task_types = models.JSONField(
        default=list, blank=True, help_text='Only items of these task types, e.g. ["billing"]; empty: all.'
    )
    reason = models.CharField(max_length=200, help_text="Recorded with the gate's decision when the rule rejects.")
    active = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="label_function_name_unique")]

    def __str__(self) -> str:
        return self.name

    def snapshot(self) -> dict:
        """The fields that determine what the rule does, as stored in its history."""
        return {
            "name": self.name,
            "kind": self.kind,
            "params": self.params,
            "field": self.field,
            "task_types": list(self.task_types or []),
            "reason": self.reason,
            "active": self.active,
        }


class LabelFunctionVersion(models.Model):
    """One change to a label function: who, when, the state before and after (``before`` is empty on creation)."""

    class Action(models.TextChoices):
        CREATE = "create"
        UPDATE = "update"
        DELETE = "delete"

    label_function = models.ForeignKey(
        LabelFunction, null=True, blank=True, on_delete=models.SET_NULL, related_name="versions"
    )
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="label_function_versions")
    version = models.PositiveIntegerField()
    action = models.CharField(max_length=6, choices=Action.choices)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    # PROTECT: history keeps its author; a user who changed something is deactivated, not deleted.
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        # One row per version of a rule (``label_function_save`` locks the rule while it numbers the next);
        # a deleted rule's rows have no label_function and are not compared.
        constraints = [
            models.UniqueConstraint(fields=["label_function", "version"], name="label_function_version_once")
        ]

    def __str__(self) -> str:
        return f"{self.after.get('name') or self.before.get('name')} v{self.version} ({self.action})"


class RuleHit(models.Model):
    """A label function rejected an item (abstentions are not stored)."""

    label_function = models.ForeignKey(LabelFunction, on_delete=models.CASCADE, related_name="hits")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="rule_hits")
    version = models.PositiveIntegerField(default=0, help_text="The rule's version that produced this hit.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["label_function", "item"], name="rule_hit_once")]

    def __str__(self) -> str:
        return f"rule {self.label_function_id} rejects item {self.item_id}"


class GateDecision(models.Model):
    """The gate's final decision on an item (see ``judging.gate.decide``); ``judge_run`` and ``tier`` name the
    policy's tier that decided it (basis judge or tier), else they are empty."""

    Outcome = gate.Outcome
    Basis = gate.Basis

    item = models.OneToOneField(Item, on_delete=models.CASCADE, related_name="gate_decision")
    outcome = models.CharField(max_length=7, choices=Outcome.choices)
    basis = models.CharField(max_length=5, choices=Basis.choices)
    basis_decision = models.CharField(max_length=6, choices=Decision.choices, blank=True)
    vetoed = models.BooleanField(default=False, help_text="An active label function rejected it.")
    reasons = models.JSONField(default=list, blank=True)
    judge_run = models.ForeignKey(JudgeRun, null=True, blank=True, on_delete=models.SET_NULL)
    tier = models.PositiveSmallIntegerField(null=True, blank=True, help_text="The policy tier (1, 2...) that decided.")
    decided_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # Counts by outcome (the funnel) and the items list's filters by outcome and basis; with the item in
            # it, a join to the items reads this index alone. It replaced the index on outcome only.
            models.Index(fields=["outcome", "basis", "item"], name="gate_outcome_basis_item"),
        ]

    def __str__(self) -> str:
        return f"{self.outcome} {self.item_id}"


class ItemBulkAction(models.Model):
    """A lead's bulk action on the items list (``judging.items.items_bulk_act``), append-only: who, when, which
    items (the list's filters, and the ids when they were picked by hand), and what it did.

    ``action`` ``queue`` puts the items in the SME queue (no sampling design: their labels are ground truth but
    the estimate does not weight them); ``audit`` draws a seeded uniform sample of ``size`` of the accepted items
    among them: over the whole accepted set it is ``annotations.sampling``'s audit design (``draw``), else a
    uniform sample of the filtered slice (``population`` items), queued but not a recorded design.
    """

    class Action(models.TextChoices):
        QUEUE = "queue", "Queue for SMEs"
        AUDIT = "audit", "Audit sample"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="item_bulk_actions")
    action = models.CharField(max_length=5, choices=Action.choices)
    filters = models.JSONField(default=dict, blank=True, help_text="The items list's filters when it was done.")
    item_ids = models.JSONField(default=list, blank=True, help_text="The items picked by hand (empty: all filtered).")
    matched = models.PositiveIntegerField(default=0, help_text="Items the selection held.")
    size = models.PositiveIntegerField(null=True, blank=True, help_text="Audit: items asked for.")
    seed = models.BigIntegerField(null=True, blank=True)
    population = models.PositiveIntegerField(null=True, blank=True, help_text="Audit: accepted items drawable.")
    queued = models.PositiveIntegerField(default=0, help_text="Items newly put in the SME queue.")
    draw = models.ForeignKey("annotations.SampleDraw", null=True, blank=True, on_delete=models.SET_NULL)
    # PROTECT: history keeps its author; a user who changed something is deactivated, not deleted.
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.action} of {self.matched} items in project {self.project_id}"


class RegateRequest(models.Model):
    """How many times a project's full re-gating (rules, then the gate) has been asked for, and how the last
    one ended.

    Each request bumps ``generation`` and queues a task carrying the new
    value; a task that finds a higher generation skips its work, since the
    later task will do it with newer data. So a burst of imports costs one
    re-gating, not one each (see ``services.regate_request``). A re-gating
    that failed for good leaves ``last_error`` (cleared by the next success).
    """

    project = models.OneToOneField(Project, on_delete=models.CASCADE, primary_key=True, related_name="+")
    generation = models.PositiveBigIntegerField(default=0)
    last_generation_done = models.PositiveBigIntegerField(default=0)
    last_finished_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"re-gating of project {self.project_id}: request {self.generation}"


NO_POLICY = "none (SME ground truth only)"


class GatingPolicy(models.Model):
    """Which judges decide a project's items, chosen by a lead (one per project; none: only SMEs and rules).

    Its ``tiers`` are tried in order (``judging.gate.tier_verdict``). Change it
    only through ``services.gating_policy_set``, which logs each change as a
    ``GatingPolicyChange``. ``target_agreement`` and ``risk`` are what the lead
    asks of each tier's agreement with the SMEs (used to choose thresholds).
    """

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="gating_policy")
    target_agreement = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
        help_text="Agreement with the SMEs each tier must reach on the items it decides (0.5 to 1).",
    )
    risk = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(0.5)],
        help_text="The probability, at most, that a tier falls short of the target (0 to 0.5).",
    )
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "gating policies"

    def __str__(self) -> str:
        return f"gating policy of {self.project}"

    def snapshot(self) -> dict:
        """The policy as the change log keeps it: ``{"target_agreement", "risk", "tiers": [{"tier", "run",
        "judge", "threshold", "decides", "note", "calibrated_at"}]}`` (``calibrated_at``: when the tier run's
        recalibration map was fit, so a recalibration is a logged change)."""
        return {
            "target_agreement": self.target_agreement,
            "risk": self.risk,
            "tiers": [tier.snapshot() for tier in self.tiers.select_related("run")],
        }

    @property
    def label(self) -> str:
        """How screens and exports name the policy: its tiers' runs and judges."""
        tiers = list(self.tiers.select_related("run")) if self.pk else []
        if not tiers:
            return NO_POLICY
        return "; ".join(tier.label for tier in tiers)


class PolicyTier(models.Model):
    """One tier of a gating policy: a finished run whose verdicts decide items whose calibrated certainty
    (``gate.verdict_certainty`` of ``Verdict.confidence_calibrated``) reaches ``threshold``; a null threshold
    decides by the verdict alone. A tier with ``decides`` False decides nothing (it could not reach the target:
    ``note``)."""

    policy = models.ForeignKey(GatingPolicy, on_delete=models.CASCADE, related_name="tiers")
    tier = models.PositiveSmallIntegerField(help_text="1 is tried first.")
    # RESTRICT: a run a policy uses cannot vanish from under the gate (unless its whole project goes).
    run = models.ForeignKey(JudgeRun, on_delete=models.RESTRICT, related_name="policy_tiers")
    threshold = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
        help_text="Least calibrated certainty, 0.5 to 1; blank: the verdict alone decides.",
    )
    decides = models.BooleanField(default=True)
    note = models.TextField(blank=True, help_text="Why the tier decides nothing, or how its threshold was chosen.")

    class Meta:
        ordering = ["tier"]
        constraints = [models.UniqueConstraint(fields=["policy", "tier"], name="policy_tier_once")]

    def __str__(self) -> str:
        return f"tier {self.tier} of {self.policy}"

    def snapshot(self) -> dict:
        return {
            "tier": self.tier,
            "run": self.run_id,
            "judge": self.run.judge_label,
            "threshold": self.threshold,
            "decides": self.decides,
            "note": self.note,
            "calibrated_at": (self.run.calibration or {}).get("fitted_at"),
        }

    @property
    def label(self) -> str:
        if not self.decides:
            return f"tier {self.tier}: run {self.run_id} ({self.run.judge_label}), decides nothing"
        sure = "by its verdict alone" if self.threshold is None else f"certainty >= {self.threshold:g}"
        return f"tier {self.tier}: run {self.run_id} ({self.run.judge_label}), {sure}"


class GatingPolicyChange(models.Model):
    """One change of a project's gating policy, append-only: who, when, the policy before and after
    (``GatingPolicy.snapshot``; ``before`` is ``{}`` for the first)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="gating_policy_changes")
    # PROTECT: history keeps its author; a user who changed something is deactivated, not deleted.
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    changed_at = models.DateTimeField(auto_now_add=True)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"gating policy change {self.pk} of project {self.project_id}"


class Certification(models.Model):
    """A certificate of the accepted set, append-only (the newest is in force): a lead's target (precision at
    least ``target`` with confidence 1 - ``delta``) and what ``judging.certify`` found for it when asked
    (``services.certification_set``). ``threshold`` is the certified P(accept) threshold (None: nothing
    certified, ``result["reason"]`` says why); ``n`` labels at the threshold, ``bound`` the Clopper-Pearson
    lower bound reached there; ``design`` the SME labels used and the draws they came from; ``result`` the whole
    ``Certificate.as_dict()``."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="certifications")
    target = models.FloatField(validators=[MinValueValidator(0.5), MaxValueValidator(0.999)])
    delta = models.FloatField(validators=[MinValueValidator(0.001), MaxValueValidator(0.5)])
    threshold = models.FloatField(null=True, blank=True)
    method = models.TextField()
    n = models.PositiveIntegerField(default=0)
    n_labelled = models.PositiveIntegerField(default=0)
    bound = models.FloatField(null=True, blank=True)
    certified = models.PositiveIntegerField(default=0)
    policy = models.TextField(blank=True, help_text="The gating policy's label when certified.")
    design = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    # PROTECT: history keeps its author; a user who changed something is deactivated, not deleted.
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"certification {self.pk} of project {self.project_id}"

    @property
    def confidence(self) -> float:
        """1 - delta: the probability, at least, that the certified items' precision reaches the target."""
        return 1.0 - self.delta
