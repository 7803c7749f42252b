"""Training sets: frozen, reproducible snapshots of a project's decided items, and their rows.

The tables keep the names they had in the judging app (``judging_trainingset``,
``judging_trainingsetrow``): the models moved here without a change to the
database (``distillation`` 0001, ``judging`` 0015).
"""

from django.conf import settings
from django.db import models
from django.urls import reverse

from annotations.models import Item, Project


class TrainingSet(models.Model):
    """A frozen, reproducible training set cut from a project's decided items (a snapshot).

    Building it (``distillation.training_sets.training_set_build``) freezes which
    items and which content go in, as rows of the chosen format; downloading it
    later gives the same bytes whatever happened to the project since. The
    ``sha256`` is that of the whole download (train rows, then validation
    rows), and depends only on the content and the options, never on ids or
    dates. Row counts add up: ``items_selected == rows_train +
    rows_validation + duplicates + unwritable``.

    One build attempt at a time holds a set that is ``building``: it claims the
    set (``claimed_by``) with a conditional UPDATE, for a lease
    (``claimed_until``) it renews as it writes; another attempt (a redelivered
    task) may take the set over only once that lease has run out.
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
    items_done = models.PositiveIntegerField(default=0, help_text="Progress of the build, out of items_selected.")
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
    claimed_by = models.CharField(
        max_length=200, blank=True, help_text="The build attempt (host/pid/random) that last claimed the set."
    )
    claimed_until = models.DateTimeField(
        null=True, blank=True, help_text="While building: the claim's lease, renewed as rows are written."
    )

    class Meta:
        db_table = "judging_trainingset"
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"training set {self.pk} ({self.format})"

    def get_absolute_url(self) -> str:
        return reverse("distillation:training_set_detail", args=[self.project.slug, self.pk])

    @property
    def percent_done(self) -> int:
        return round(100 * self.items_done / self.items_selected) if self.items_selected else 0


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
        db_table = "judging_trainingsetrow"
        indexes = [models.Index(fields=["training_set", "split", "content_sha256"], name="training_row_in_order")]

    def __str__(self) -> str:
        return f"{self.split} row of {self.external_id}"
