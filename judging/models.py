"""Judge runs and verdicts, label functions and their hits, and the gate's decision."""

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.urls import reverse

from annotations.models import Decision, Item, Project


class JudgeRun(models.Model):
    """One pass of a judge over a project's items. Outcomes live on the row."""

    class Backend(models.TextChoices):
        OPENAI = "openai", "OpenAI-compatible server"
        LOCAL = "local", "Local classifier"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        FINISHED = "finished"
        FAILED = "failed"
        CANCELLED = "cancelled"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="judge_runs")
    backend = models.CharField(max_length=10, choices=Backend.choices)
    model = models.CharField(max_length=200, help_text="Model name at the endpoint, or the local classifier's name.")
    base_url = models.CharField(max_length=500, blank=True)
    config = models.JSONField(default=dict, blank=True, help_text="Everything that determines the output.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    items_total = models.PositiveIntegerField(default=0)
    items_done = models.PositiveIntegerField(default=0)
    items_error = models.PositiveIntegerField(default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.judge_label})"

    def get_absolute_url(self) -> str:
        return reverse("judging:run_detail", args=[self.project.slug, self.pk])

    @property
    def cost(self) -> Decimal:
        """Tokens in and out at the prices recorded when the run started (per million tokens)."""
        price_in = Decimal(self.config.get("price_in_per_million", "0"))
        price_out = Decimal(self.config.get("price_out_per_million", "0"))
        return (self.tokens_in * price_in + self.tokens_out * price_out) / 1_000_000

    @property
    def judge_label(self) -> str:
        """Which judge this was, as every screen and export shows it."""
        if self.backend == self.Backend.LOCAL:
            return f"local classifier {self.model} (not an LLM)"
        return f"{self.model} at {self.base_url}"


class Verdict(models.Model):
    """The judge's verdict on one item in one run; ``verdict`` is empty when judging failed."""

    run = models.ForeignKey(JudgeRun, on_delete=models.CASCADE, related_name="verdicts")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="verdicts")
    verdict = models.CharField(max_length=6, choices=Decision.choices, blank=True)
    rationale = models.TextField(blank=True)
    score = models.FloatField(null=True, blank=True, help_text="P(accept) for the local classifier.")
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    latency_ms = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="verdict_once_per_run_item")]

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
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-changed_at", "-id"]

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
    """The gate's final decision on an item (see ``judging.gate.decide``)."""

    class Outcome(models.TextChoices):
        ACCEPT = "accept"
        REJECT = "reject"
        PENDING = "pending"

    class Basis(models.TextChoices):
        SME = "sme", "SME ground truth"
        JUDGE = "judge", "Judge verdict"
        NONE = "none", "Neither"

    item = models.OneToOneField(Item, on_delete=models.CASCADE, related_name="gate_decision")
    outcome = models.CharField(max_length=7, choices=Outcome.choices)
    basis = models.CharField(max_length=5, choices=Basis.choices)
    basis_decision = models.CharField(max_length=6, choices=Decision.choices, blank=True)
    vetoed = models.BooleanField(default=False, help_text="An active label function rejected it.")
    reasons = models.JSONField(default=list, blank=True)
    judge_run = models.ForeignKey(JudgeRun, null=True, blank=True, on_delete=models.SET_NULL)
    decided_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["outcome"])]

    def __str__(self) -> str:
        return f"{self.outcome} {self.item_id}"


class TrainingSet(models.Model):
    """A frozen, reproducible training set cut from a project's decided items (a snapshot).

    Building it (``judging.training_sets.training_set_build``) freezes which
    items and which content go in, as rows of the chosen format; downloading it
    later gives the same bytes whatever happened to the project since. The
    ``sha256`` is that of the whole download (train rows, then validation
    rows), and depends only on the content and the options, never on ids or
    dates. Row counts add up: ``items_selected == rows_train +
    rows_validation + duplicates + unwritable``.
    """

    class Format(models.TextChoices):
        CHAT = "chat", "OpenAI chat fine-tuning JSONL"
        ALPACA = "alpaca", "Alpaca JSONL"
        SHAREGPT = "sharegpt", "ShareGPT JSONL"
        DPO = "dpo", "DPO preference pairs JSONL"
        JUDGE = "judge", "Judge distillation JSONL"
        CSV = "csv", "CSV"

    class Status(models.TextChoices):
        BUILDING = "building"
        READY = "ready"
        FAILED = "failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="training_sets")
    name = models.CharField(max_length=200, blank=True)
    format = models.CharField(max_length=10, choices=Format.choices, default=Format.CHAT)
    system_prompt = models.TextField(blank=True, help_text="Written as the system turn of every row, when set.")
    validation_fraction = models.FloatField(default=0, help_text="Share of rows held out for validation, 0 to 0.5.")
    seed = models.IntegerField(default=0, help_text="Seeds the train/validation split and the DPO pairing.")
    dedupe = models.BooleanField(default=True, help_text="Drop rows whose content repeats an earlier row's.")
    filters = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.BUILDING)
    error = models.TextField(blank=True)
    items_selected = models.PositiveIntegerField(default=0)
    rows_train = models.PositiveIntegerField(default=0)
    rows_validation = models.PositiveIntegerField(default=0)
    duplicates = models.PositiveIntegerField(default=0)
    unwritable = models.PositiveIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True, help_text="Every duplicate and unwritable item, with why.")
    lineage = models.JSONField(default=dict, blank=True)
    files = models.JSONField(default=dict, blank=True, help_text="Per split: rows, bytes and sha256.")
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"training set {self.pk} ({self.format})"


class TrainingSetRow(models.Model):
    """One frozen row of a training set: the exact text written for it (a JSONL line or a CSV record)."""

    class Split(models.TextChoices):
        TRAIN = "train"
        VALIDATION = "validation"

    training_set = models.ForeignKey(TrainingSet, on_delete=models.CASCADE, related_name="rows")
    split = models.CharField(max_length=10, choices=Split.choices)
    content_sha256 = models.CharField(max_length=64, help_text="Orders rows within a split and finds duplicates.")
    item = models.ForeignKey(Item, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    external_id = models.CharField(max_length=255)
    line = models.TextField()

    class Meta:
        indexes = [models.Index(fields=["training_set", "split", "content_sha256"], name="training_row_in_order")]

    def __str__(self) -> str:
        return f"{self.split} row of {self.external_id}"
