"""Training sets: frozen, reproducible snapshots of a project's decided items, and their rows; the teacher's
settings and runs (Sensei Larry).

The tables keep the names they had in the judging app (``judging_trainingset``,
``judging_trainingsetrow``): the models moved here without a change to the
database (``distillation`` 0001, ``judging`` 0015).
"""

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxLengthValidator, MaxValueValidator, MinValueValidator
from django.db import models
from django.urls import reverse

from annotations.models import Item, Project, validate_no_credentials
from judging.models import TOKENS_PER_MINUTE_MIN, Verdict, validate_judge_url
from larry_web import llm
from larry_web.work import LeasedWork, Run


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
        REASONING = "reasoning", "Reasoning traces JSONL (chat with <think>)"
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


class TeacherSettings(models.Model):
    """A project's teacher (Sensei Larry): the OpenAI-compatible server and model that write responses, and how
    they are asked (one row per project, edited in the admin).

    An empty ``base_url`` or ``model`` takes ``LARRY_TEACHER_*`` from the environment, an empty ``api_key``
    ``LARRY_TEACHER_API_KEY`` only when ``base_url`` is empty too (that key is for the environment's URL)
    (``distillation.teacher.teacher_config_for`` is the only reader); with neither, the project has no teacher.
    """

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="teacher_settings")
    base_url = models.CharField(
        max_length=500,
        blank=True,
        validators=[validate_judge_url, validate_no_credentials],
        help_text="OpenAI-compatible base URL, e.g. http://vllm:8000/v1 (blank: LARRY_TEACHER_BASE_URL).",
    )
    model = models.CharField(max_length=200, blank=True, help_text="Blank: LARRY_TEACHER_MODEL.")
    # Write-only, as a judge endpoint's: runs record the URL and model only.
    api_key = models.CharField(
        max_length=200,
        blank=True,
        help_text="Blank: none, or LARRY_TEACHER_API_KEY when the URL is blank too (the environment's URL).",
    )
    system_prompt = models.TextField(
        blank=True,
        validators=[MaxLengthValidator(20_000)],
        help_text="Sent as the system turn before each prompt (blank: none; the project's guidelines are not added).",
    )
    temperature = models.FloatField(default=0.7, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)])
    max_tokens = models.PositiveIntegerField(
        default=1024,
        validators=[MinValueValidator(16), MaxValueValidator(65536)],
        help_text="The most tokens an answer may use; an answer cut off there is not stored.",
    )
    ask_reasoning = models.BooleanField(
        "ask for reasoning",
        default=False,
        help_text="Ask the teacher to think first (vLLM's reasoning_content, or a <think> block): kept apart from "
        "the response, for reasoning formats.",
    )
    max_in_flight = models.PositiveSmallIntegerField(
        default=8, validators=[MinValueValidator(1)], help_text="Requests one worker keeps open to the teacher."
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1, "at least 1; leave it blank for no limit")],
        help_text="Most requests a minute to the teacher server, spaced evenly (blank: no limit). Applies per "
        "worker process: with N Celery processes teaching at once, the server may see N times this.",
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[
            MinValueValidator(TOKENS_PER_MINUTE_MIN, f"at least {TOKENS_PER_MINUTE_MIN}; leave it blank for no limit")
        ],
        help_text="Most tokens a minute (blank: no limit), counted before each request as the characters of its "
        "messages / 4 plus max tokens. Applies per worker process, like requests per minute.",
    )
    price_in = models.DecimalField(max_digits=10, decimal_places=4, default=0, help_text="Per million prompt tokens.")
    price_out = models.DecimalField(
        max_digits=10, decimal_places=4, default=0, help_text="Per million completion tokens."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = verbose_name_plural = "teacher settings"

    def __str__(self) -> str:
        return f"teacher of {self.project}"


class TeacherRun(Run):
    """One pass of the teacher over chosen items of a project, writing a candidate response to each prompt.

    ``selection`` says which items (``rejected``: the gate rejected them; ``all``; ``missing``: prompts imported
    without a response; ``items``: ids chosen in ``config["item_ids"]``). ``config`` is the snapshot of what
    determines the answers (URL, model, system prompt, temperature, max tokens, ask for reasoning, prices). Each
    item answered or failed has a ``TeacherAnswer``; ``TeacherWork`` rows are what is left. Outcomes live on the
    row: ``items_total``, ``answers_written`` and ``answers_failed`` (by class in ``TeacherAnswer``), tokens.
    """

    class Selection(models.TextChoices):
        REJECTED = "rejected", "Rejected by the gate"
        ALL = "all", "All items"
        MISSING = "missing", "Prompts without a response"
        ITEMS = "items", "Chosen items"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="teacher_runs")
    model = models.CharField(max_length=200)
    base_url = models.CharField(max_length=500)
    selection = models.CharField(max_length=8, choices=Selection.choices)
    answers_written = models.PositiveIntegerField(default=0)
    answers_failed = models.PositiveIntegerField(default=0)
    judge_answers = models.BooleanField(
        default=False, help_text="When it finishes, the gating policy's judges judge the answers it wrote."
    )
    judge_runs = models.ManyToManyField(
        "judging.JudgeRun", blank=True, related_name="+", help_text="The judge runs started over its answers."
    )
    judge_note = models.TextField(blank=True, help_text="Why its answers were not judged (no gating policy...).")

    def __str__(self) -> str:
        return f"teacher run {self.pk} ({self.model})"

    @property
    def items_done(self) -> int:
        return self.answers_written + self.answers_failed

    @property
    def percent_done(self) -> int:
        return min(100, round(100 * self.items_done / self.items_total)) if self.items_total else 0

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.FINISHED, self.Status.FAILED, self.Status.CANCELLED)


class TeacherWork(LeasedWork):
    """One item a teacher run still has to answer (``larry_web.work``): deleted in the transaction that stores
    its ``TeacherAnswer``."""

    run = models.ForeignKey(TeacherRun, on_delete=models.CASCADE, related_name="work")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="+")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="teacher_work_one_per_run_item")]
        indexes = [models.Index(fields=["run", "leased_until"], name="teacher_work_run_lease")]

    def __str__(self) -> str:
        return f"teacher run {self.run_id}, item {self.item_id}"


class TeacherAnswer(models.Model):
    """What the teacher did with one item of a run: ``answer`` is the new Item holding its response (source model
    the teacher's), or None when no response was stored (``error_class`` says why: a transport fault after
    retries, ``truncated`` at max tokens, a ``refusal``, an ``empty`` answer). Tokens are None when unknown."""

    # The judge's classes (a transport fault, a truncation, a refusal...), and an empty answer.
    ErrorClass = models.TextChoices(
        "ErrorClass",
        [(c.name, (c.value, c.label)) for c in Verdict.ErrorClass] + [("EMPTY", ("empty", "empty answer"))],
    )

    run = models.ForeignKey(TeacherRun, on_delete=models.CASCADE, related_name="answers")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="teacher_answers")
    answer = models.OneToOneField(Item, null=True, blank=True, on_delete=models.CASCADE, related_name="teacher_answer")
    error_class = models.CharField(max_length=14, choices=ErrorClass.choices, blank=True)
    error = models.TextField(blank=True)
    finish_reason = models.CharField(max_length=40, blank=True)
    tokens_in = models.PositiveIntegerField(null=True, blank=True)
    tokens_out = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(default=0)
    attempts = models.JSONField(default=list, blank=True, help_text="Every HTTP exchange, in order.")
    answered_by = models.CharField(max_length=200, blank=True, help_text="The model the server says answered.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "item"], name="teacher_answer_once_per_run_item")]

    def __str__(self) -> str:
        return f"teacher answer to {self.item_id} (run {self.run_id}): {self.error_class or 'written'}"

    @property
    def cost(self) -> Decimal:
        """This answer's tokens at the run's prices (unknown tokens count 0)."""
        return llm.cost(self.run.config, self.tokens_in or 0, self.tokens_out or 0)
