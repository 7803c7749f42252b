"""Projects, items and SME reviews: the ground-truth side of the pipeline."""

from django.conf import settings
from django.db import models
from django.urls import reverse


class Decision(models.TextChoices):
    """A binary judgement, shared by SME reviews, judge verdicts and the gate."""

    ACCEPT = "accept", "Accept"
    REJECT = "reject", "Reject"


class Project(models.Model):
    """One task / one copilot being evaluated.

    The judge fields override ``LARRY_JUDGE_*`` from the environment when set;
    with neither, the project is judged by the local classifier.
    """

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    guidelines = models.TextField(blank=True, help_text="What an accurate and complete response means here.")
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="projects")
    judge_base_url = models.URLField(blank=True, help_text="OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
    judge_model = models.CharField(max_length=200, blank=True)
    judge_api_key = models.CharField(max_length=200, blank=True)
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
        return user.is_staff or self.members.filter(pk=user.pk).exists()


class Item(models.Model):
    """One LLM response to judge, with what the model saw.

    ``priority`` is written by ``judging`` (e.g. uncertainty) and only read
    here, so that nothing else the judge said reaches the review screen.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="items")
    external_id = models.CharField(max_length=255)
    prompt = models.TextField()
    context = models.TextField(blank=True)
    response = models.TextField()
    reference = models.TextField(blank=True)
    source_model = models.CharField(max_length=200, blank=True)
    task_type = models.CharField(max_length=200, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    in_sme_queue = models.BooleanField(default=False, db_index=True)
    priority = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "external_id"], name="item_external_id_unique_per_project"),
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}:{self.external_id}"


class Review(models.Model):
    """An SME's accept/reject of one item. Imported prior labels have no reviewer."""

    class Origin(models.TextChoices):
        UI = "ui", "Review screen"
        IMPORT = "import", "Imported label"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="reviews")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="reviews"
    )
    decision = models.CharField(max_length=6, choices=Decision.choices)
    reason = models.CharField(max_length=200, blank=True)
    origin = models.CharField(max_length=6, choices=Origin.choices, default=Origin.UI)
    created_at = models.DateTimeField(auto_now_add=True)

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
