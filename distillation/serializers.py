"""DRF serializers of training sets: the options a new snapshot takes, and a snapshot as the API shows it."""

from django.urls import reverse
from rest_framework import serializers

from distillation.models import TeacherRun, TrainingSet


class FiltersSerializer(serializers.Serializer):
    """``TrainingSet.filters``: which decided items a snapshot draws from (all optional)."""

    source_models = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=100)
    task_types = serializers.ListField(child=serializers.CharField(max_length=200), required=False, max_length=100)
    judge_run = serializers.IntegerField(required=False, min_value=1, help_text="Only items this run judged.")
    created_after = serializers.DateTimeField(required=False, help_text="Items imported at or after this time.")
    created_before = serializers.DateTimeField(required=False, help_text="Items imported before this time.")

    def to_internal_value(self, data):
        if isinstance(data, dict):
            # A misspelt filter ("source_model") would otherwise be dropped, and the set built from every item.
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {key: [f"unknown filter; the filters are {', '.join(self.fields)}"] for key in unknown}
                )
        values = super().to_internal_value(data)
        # Stored as JSON, compared by the database: keep times as ISO 8601 strings.
        return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in values.items()}


class TrainingSetOptions(serializers.Serializer):
    """What a new snapshot is: format, system prompt, split, de-duplication and filters."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    format = serializers.ChoiceField(choices=TrainingSet.Format.choices, default=TrainingSet.Format.CHAT)
    system_prompt = serializers.CharField(
        required=False, allow_blank=True, default="", trim_whitespace=False, max_length=100_000
    )
    validation_fraction = serializers.FloatField(min_value=0, max_value=0.5, default=0)
    seed = serializers.IntegerField(min_value=-(2**31), max_value=2**31 - 1, default=0)
    dedupe = serializers.BooleanField(default=True)
    filters = FiltersSerializer(required=False, default=dict)


class TrainingSetSerializer(serializers.ModelSerializer):
    filters = FiltersSerializer(required=False)
    download = serializers.SerializerMethodField(help_text="Where to GET the file once ready.")

    class Meta:
        model = TrainingSet
        fields = [
            "id",
            "name",
            "format",
            "system_prompt",
            "validation_fraction",
            "seed",
            "dedupe",
            "filters",
            "status",
            "error",
            "items_selected",
            "rows_train",
            "rows_validation",
            "duplicates",
            "unwritable",
            "sha256",
            "size_bytes",
            "files",
            "lineage",
            "download",
            "created_at",
            "finished_at",
        ]
        read_only_fields = [f for f in fields if f not in TrainingSetOptions().fields]

    def get_download(self, training_set: TrainingSet) -> str:
        path = reverse("training-set-download", args=[training_set.project.slug, training_set.pk])
        return self.context["request"].build_absolute_uri(path)


class TrainingSetReportSerializer(serializers.Serializer):
    duplicates = serializers.ListField(child=serializers.DictField(), help_text='[{"external_id", "duplicate_of"}]')
    unwritable = serializers.ListField(child=serializers.DictField(), help_text='[{"external_id", "reason"}]')


class TeacherRunStartSerializer(serializers.Serializer):
    """What a new teacher run answers: ``items`` (``rejected``, ``all``, ``missing``), or ``item_ids``."""

    items = serializers.ChoiceField(
        choices=[c for c in TeacherRun.Selection.values if c != TeacherRun.Selection.ITEMS],
        required=False,
        default=TeacherRun.Selection.REJECTED,
        help_text="rejected: the items the gate rejected; all: every item; missing: prompts without a response.",
    )
    item_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1),
        required=False,
        max_length=100_000,
        help_text="Instead of items: these items (a filter from the items list).",
    )
    judge = serializers.BooleanField(
        required=False,
        default=False,
        help_text="When the run finishes, have the gating policy's judges judge its answers (no policy: nothing is "
        "judged, and judge_note says so).",
    )


class TeacherRunSerializer(serializers.ModelSerializer):
    """A teacher run with its snapshot (no key), progress, failures by class, cost, and what the gate made of its
    answers (``teacher_runs.teacher_run_report``)."""

    items_done = serializers.IntegerField(read_only=True)
    percent_done = serializers.IntegerField(read_only=True)
    cost = serializers.DecimalField(max_digits=20, decimal_places=6, read_only=True)
    report = serializers.SerializerMethodField()

    class Meta:
        model = TeacherRun
        fields = (
            "id",
            "model",
            "base_url",
            "selection",
            "config",
            "status",
            "error",
            "items_total",
            "items_done",
            "percent_done",
            "answers_written",
            "answers_failed",
            "judge_answers",
            "judge_runs",
            "judge_note",
            "tokens_in",
            "tokens_out",
            "cost",
            "report",
            "created_at",
            "started_at",
            "finished_at",
        )
        read_only_fields = fields

    def get_report(self, run: TeacherRun) -> dict:
        from distillation.teacher_runs import teacher_run_report

        report = teacher_run_report(run)
        report["cost"] = str(report["cost"])
        return report
