"""Projects, items and SME reviews: the ground-truth side of the pipeline."""

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.urls import reverse

DEFAULT_REJECT_REASONS = ["inaccurate", "incomplete", "policy", "tone"]


def default_reject_reasons() -> list[str]:
    return list(DEFAULT_REJECT_REASONS)


def validate_reject_reasons(value) -> None:
    """A JSON list of 1 to 9 distinct, non-empty strings (keys 1-9 pick them); raises ValidationError."""
    if not isinstance(value, list) or not all(isinstance(r, str) and r.strip() for r in value):
        raise ValidationError('give a JSON list of reasons, e.g. ["inaccurate", "incomplete", "tone"]')
    if not 1 <= len(value) <= 9:
        raise ValidationError(f"give 1 to 9 reasons (keys 1-9 pick them), not {len(value)}")
    if len({r.strip() for r in value}) != len(value):
        raise ValidationError("reasons must be distinct")
    if any(len(r) > 200 for r in value):
        raise ValidationError("a reason is at most 200 characters")
    if any("\x00" in r for r in value):
        raise ValidationError("a reason cannot contain a NUL character")


def validate_no_credentials(url: str) -> None:
    """Refuse a URL carrying a user name or password: judge URLs are shown on run pages and in exports."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValidationError(
            "this URL carries credentials, and the judge's URL is shown on every run page: "
            "remove them and put the key in the API key field"
        )


class Decision(models.TextChoices):
    """A binary judgement, shared by SME reviews, judge verdicts and the gate."""

    ACCEPT = "accept", "Accept"
    REJECT = "reject", "Reject"


class Project(models.Model):
    """One task / one copilot being evaluated.

    Its judges are ``judging.JudgeEndpoint`` rows; the default one overrides
    ``LARRY_JUDGE_*`` from the environment; with neither, the project is
    judged by the local classifier.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    guidelines = models.TextField(blank=True, help_text="What an accurate and complete response means here.")
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="projects", through="Membership"
    )
    reviews_per_item = models.PositiveSmallIntegerField(
        default=1, help_text="How many distinct SMEs review each queued item."
    )
    lease_minutes = models.PositiveSmallIntegerField(
        default=10, help_text="An item handed to an SME returns to the queue after this long without a decision."
    )
    reject_reasons = models.JSONField(
        default=default_reject_reasons,
        validators=[validate_reject_reasons],
        help_text='Reasons SMEs pick from when rejecting (1 to 9), e.g. ["inaccurate", "tone"].',
    )
    accepts_prompt_only = models.BooleanField(
        "accepts prompts without a response",
        default=False,
        help_text='Imports may hold rows with a prompt and no response; they wait as "needs a response" for a '
        "teacher run and are never exported.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("judging:project_detail", args=[self.slug])

    def is_visible_to(self, user) -> bool:
        """Staff see every project; others only those they are members of."""
        if not user.is_authenticated:
            return False
        return user.is_staff or self.memberships.filter(user=user).exists()

    def is_lead(self, user) -> bool:
        """Leads (and staff) adjudicate disagreements."""
        if not user.is_authenticated:
            return False
        return user.is_staff or self.memberships.filter(user=user, role=Membership.Role.LEAD).exists()

    @property
    def lease(self) -> timedelta:
        return timedelta(minutes=self.lease_minutes)


class Membership(models.Model):
    """A user's place in a project: an SME reviews; a lead also adjudicates."""

    class Role(models.TextChoices):
        SME = "sme", "SME"
        LEAD = "lead", "Project lead"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=4, choices=Role.choices, default=Role.SME)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_once")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} ({self.role})"


class Item(models.Model):
    """One LLM response to judge, with what the model saw.

    ``priority`` is written by ``judging`` (e.g. uncertainty) and only read
    here, so that nothing else the judge said reaches the review screen.
    An empty ``response`` is a prompt imported without one (a project that
    ``accepts_prompt_only``): it "needs a response", is never exported, and
    a teacher run may answer it. A teacher's answer is an item of its own
    whose ``answers`` is the item it answers (same prompt and context);
    ``reasoning`` is what the teacher thought before answering, never part
    of ``response``.
    """

    # No index of its own: the unique (project, external_id) index serves lookups by project.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items", db_index=False)
    external_id = models.CharField(max_length=255)
    prompt = models.TextField()
    context = models.TextField(blank=True)
    response = models.TextField(blank=True)
    reference = models.TextField(blank=True)
    # db_default: the importer COPYs items with only the columns it knows.
    reasoning = models.TextField(
        blank=True, default="", db_default="", help_text="The reasoning its author (a teacher) gave before it."
    )
    answers = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="answered_by",
        help_text="The item whose prompt this one answers (a teacher's candidate response).",
    )
    source_model = models.CharField(max_length=200, blank=True)
    task_type = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # No "in the SME queue" column: an item is queued when it has slots (annotations.queue.in_sme_queue), so queueing
    # writes slots only, never the item row with its indexes (the full-text one included).
    priority = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "external_id"], name="item_external_id_unique_per_project"),
        ]
        # The items list (judging.items) filters by these and lists their distinct values; the full-text index
        # is PostgreSQL's own (judging migration 0016).
        indexes = [
            models.Index(fields=["project", "task_type"], name="item_project_task_type"),
            models.Index(fields=["project", "source_model"], name="item_project_source_model"),
            models.Index(fields=["project", "created_at"], name="item_project_created_at"),
        ]

    def __str__(self) -> str:
        return self.external_id

    @property
    def needs_response(self) -> bool:
        """A prompt imported without a response."""
        return not self.response


class Review(models.Model):
    """An SME's accept/reject of one item. Imported prior labels have no reviewer."""

    class Origin(models.TextChoices):
        UI = "ui", "Review screen"
        IMPORT = "import", "Imported label"

    # No index of its own: the unique (item, reviewer) index serves lookups by item.
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="reviews", db_index=False)
    # PROTECT: a deleted SME would turn their reviews into imported labels; deactivate the user instead.
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="reviews"
    )
    decision = models.CharField(max_length=6, choices=Decision.choices)
    reason = models.CharField(max_length=200, blank=True)
    comment = models.TextField(blank=True)
    corrected_response = models.TextField(blank=True, help_text="The SME's better answer, for exports that use it.")
    origin = models.CharField(max_length=6, choices=Origin.choices, default=Origin.UI)
    seconds_spent = models.FloatField(null=True, blank=True, help_text="From hand-out to decision.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["item", "reviewer"], name="review_once_per_sme"),
            models.UniqueConstraint(
                fields=["item"], condition=models.Q(reviewer__isnull=True), name="review_one_imported_label"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.decision} {self.item}"

    def snapshot(self) -> dict:
        return {
            "decision": self.decision,
            "reason": self.reason,
            "comment": self.comment,
            "corrected_response": self.corrected_response,
        }


class ReviewChange(models.Model):
    """History of ground truth: who changed which item's review or adjudication, when, from what to what.

    Append-only: rows are written by the services in ``annotations.services``
    and never changed or deleted (the admin shows them, the API has none);
    they go only with their item. ``reviewer`` is whose decision it is (the
    SME, none for an imported label, the lead for an adjudication);
    ``changed_by`` is who made the change (the SME on the review screen, staff
    in the admin). Neither user can be deleted while their history exists.
    """

    class Action(models.TextChoices):
        CREATE = "create", "Decision"
        EDIT = "edit", "Edit"
        UNDO = "undo", "Undo (by the SME)"
        DELETE = "delete", "Deleted by staff"
        ADJUDICATE = "adjudicate", "Adjudication"
        UNADJUDICATE = "unadjudicate", "Adjudication deleted"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="review_changes")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+", help_text="Whose decision."
    )
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who made the change: the SME, or staff in the admin.",
    )
    action = models.CharField(max_length=12, choices=Action.choices)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    changed_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-changed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} {self.item_id} by {self.changed_by_id}"


class Slot(models.Model):
    """One review wanted of a queued item; a project asking k reviews per item has k slots per item.

    A slot is free (no reviewer, or an expired lease), leased to one SME until
    ``leased_until``, or done. The queue hands out free slots with
    ``SELECT ... FOR UPDATE SKIP LOCKED``, so concurrent SMEs never get the
    same slot; an SME never holds two slots of one item.
    """

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="slots")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    priority = models.FloatField(default=0)
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    leased_at = models.DateTimeField(null=True, blank=True)
    leased_until = models.DateTimeField(null=True, blank=True)
    done = models.BooleanField(default=False)

    class Meta:
        indexes = [
            models.Index(
                fields=["project", "-priority", "id"], condition=models.Q(done=False), name="slot_open_in_order"
            ),
            models.Index(fields=["reviewer", "done"], name="slot_by_reviewer"),
            models.Index(fields=["item", "reviewer"], name="slot_by_item_reviewer"),
        ]

    def __str__(self) -> str:
        return f"slot {self.pk} of item {self.item_id}"


class Skip(models.Model):
    """An SME passed on an item: it goes back to the queue for others, never to them again."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="+")
    reviewer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "reviewer"], name="skip_once")]

    def __str__(self) -> str:
        return f"{self.reviewer_id} skipped {self.item_id}"


class Adjudication(models.Model):
    """A project lead's decision on an item the SMEs disagreed on; it is the item's ground truth."""

    item = models.OneToOneField(Item, on_delete=models.CASCADE, related_name="adjudication")
    decision = models.CharField(max_length=6, choices=Decision.choices)
    reason = models.CharField(max_length=200, blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    decided_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.decision} {self.item_id} (adjudicated)"

    def snapshot(self) -> dict:
        return {"decision": self.decision, "reason": self.reason}


class ImportJob(models.Model):
    """A file uploaded in the browser and imported by a Celery task (``annotations.tasks.run_import_job``).

    Progress (``rows_read``, ``bytes_read`` of ``bytes_total``) is written after
    every batch; ``report`` is ``ImportReport.as_dict()`` when the job ends:
    ``{"created", "existing", "labels", "errors": [{"line", "reason"}], "fatal"}``.
    A job that could not read its file to the end is ``failed`` with the reason
    in ``error``; what it stored before the fault is in ``report``.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    class Format(models.TextChoices):
        JSONL = "jsonl", "JSONL"
        CSV = "csv", "CSV"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="import_jobs")
    file = models.FileField(upload_to="imports/%Y/%m/%d/", max_length=500)
    filename = models.CharField(max_length=255, help_text="The name the file was uploaded with.")
    format = models.CharField(max_length=5, choices=Format.choices)
    import_labels = models.BooleanField(default=True, help_text="Import prior labels as SME reviews.")
    label_field = models.CharField(max_length=100, default="human_label")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=7, choices=Status.choices, default=Status.QUEUED)
    rows_read = models.PositiveIntegerField(default=0)
    bytes_read = models.PositiveBigIntegerField(default=0)
    bytes_total = models.PositiveBigIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"import {self.pk} of {self.filename} ({self.status})"

    def get_absolute_url(self) -> str:
        return reverse("annotations:import_job", args=[self.project.slug, self.pk])

    @property
    def percent(self) -> int:
        """Bytes read as a whole percentage of the file (100 once done)."""
        if self.status == self.Status.DONE:
            return 100
        return min(100, self.bytes_read * 100 // self.bytes_total) if self.bytes_total else 0

    @property
    def finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED)


class SampleDraw(models.Model):
    """One draw of items into the SME queue, by a recorded design (``annotations.sampling.sample_draw``).

    ``design`` is how items were chosen; ``strata`` the field a stratified draw stratifies by (``task_type`` or
    ``source_model``) and ``allocation`` how it shares the size out; ``uniform_share`` the slice of a
    confidence-weighted draw drawn uniformly; ``population`` how many items could be drawn. Each drawn item has a
    ``SampleMembership`` with its inclusion probability, so estimates can weight SME labels by its inverse.
    """

    class Design(models.TextChoices):
        UNIFORM = "uniform", "Uniform"
        STRATIFIED = "stratified", "Stratified"
        CONFIDENCE = "confidence", "Confidence-weighted"
        AUDIT = "audit", "Audit of the accepted set (uniform)"

    class Allocation(models.TextChoices):
        PROPORTIONAL = "proportional", "Proportional"
        EQUAL = "equal", "Equal"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="sample_draws")
    design = models.CharField(max_length=10, choices=Design.choices)
    strata = models.CharField(max_length=20, blank=True)
    allocation = models.CharField(max_length=12, choices=Allocation.choices, blank=True)
    uniform_share = models.FloatField(null=True, blank=True)
    seed = models.BigIntegerField()
    size = models.PositiveIntegerField(help_text="Items asked for.")
    drawn = models.PositiveIntegerField(default=0, help_text="Items drawn (fewer when the population is smaller).")
    population = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    # A draw made in the background (``annotations.sampling.sample_draw`` with ``later``) is queued, then running, then
    # done (its items recorded and queued, in one transaction) or failed (nothing of it recorded; ``error`` says
    # why). A draw made in the request is done when it is saved.
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DONE)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"draw {self.pk}: {self.design} {self.drawn}/{self.size} (seed {self.seed}, {self.status})"


class SampleMembership(models.Model):
    """An item drawn by a ``SampleDraw``, with the probability the design gave it of being drawn."""

    draw = models.ForeignKey(SampleDraw, on_delete=models.CASCADE, related_name="members")
    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="sample_memberships")
    inclusion_probability = models.FloatField()
    uniform_slice = models.BooleanField(default=False, help_text="Drawn by the design's uniform part.")
    stratum = models.CharField(max_length=200, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["draw", "item"], name="sample_membership_once"),
            models.CheckConstraint(
                condition=models.Q(inclusion_probability__gt=0, inclusion_probability__lte=1),
                name="sample_membership_probability",
            ),
        ]

    def __str__(self) -> str:
        return f"item {self.item_id} in draw {self.draw_id} (p={self.inclusion_probability:.3g})"


class ProjectChange(models.Model):
    """One change a lead made on the project settings page, append-only: who, when, what (``action``) and its
    particulars (``detail``: e.g. ``{"user": "ana", "role": "sme"}`` for a member added, ``{"before": ...,
    "after": ...}`` for reasons or guidelines edited, ``{"run": 7}`` for a run started)."""

    class Action(models.TextChoices):
        MEMBER_ADD = "member_add", "Member added"
        MEMBER_ROLE = "member_role", "Member's role changed"
        MEMBER_REMOVE = "member_remove", "Member removed"
        ACCOUNT_CREATE = "account_create", "Account created"
        LINK_ISSUE = "link_issue", "Set-password link issued"
        SETTINGS_EDIT = "settings_edit", "Reasons or guidelines edited"
        RUN_START = "run_start", "Judge run started"
        RUN_CONTROL = "run_control", "Judge run cancelled or resumed"
        REGATE = "regate", "Re-gating asked for"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="changes")
    # PROTECT: history keeps its author; a user who changed something is deactivated, not deleted.
    changed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    changed_at = models.DateTimeField(auto_now_add=True)
    action = models.CharField(max_length=20, choices=Action.choices)
    detail = models.JSONField(default=dict, blank=True)
    # The account an ``account_create`` made (or a ``link_issue`` gave a link for), by id: a username can be
    # renamed or reused, and only an account this project's settings page created may be given a new
    # set-password link from it (``annotations.project_settings.set_password_link``).
    account = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-changed_at", "-id"]
        indexes = [models.Index(fields=["project", "-changed_at"], name="project_change_recent")]

    def __str__(self) -> str:
        return f"{self.get_action_display()} in project {self.project_id}"
