"""REST API of the annotations app: projects, items, reviews, and import.

Every endpoint needs an authenticated user (``Authorization: Token <key>``,
or a browser session). Object-level rule, in ``project_for_api``: a project
that the user is not a member of does not exist for them (404); its items,
reviews and everything the judge produced are for its leads and staff (403
for SMEs, who review blind). Lists are cursor-paginated (``?cursor=``,
``?page_size=`` up to 1000), stable under concurrent inserts.
"""

import datetime

import django_filters
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Prefetch, Q
from django.http import Http404
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.importers import FORMATS, ImportFormatError, detect_format, import_items
from annotations.models import (
    Decision,
    ImportJob,
    Item,
    Project,
    Review,
    SampleDraw,
    SampleMembership,
    validate_reject_reasons,
)
from annotations.queue import in_sme_queue
from annotations.sampling import DEFAULT_UNIFORM_SHARE, STRATA_FIELDS, SamplingError, draws_for, sample_draw
from annotations.selectors import projects_for
from annotations.services import import_job_create, items_imported
from judging.gate import Basis, Outcome  # the gate's vocabulary; judging.gate imports no app
from larry_web.http import prefers_async

PROJECT_SLUG = OpenApiParameter("project_slug", OpenApiTypes.STR, OpenApiParameter.PATH, description="Project slug")
SLUG = OpenApiParameter("slug", OpenApiTypes.STR, OpenApiParameter.PATH, description="Project slug")


def project_for_api(request, slug: str) -> Project:
    """The project if the token's user leads it or is staff: 404 for outsiders, 403 for SMEs.

    Importing (prior labels become ground truth) and exporting (the judge's and
    the rules' results) are for leads; SMEs review blind.
    """
    project = Project.objects.filter(slug=slug).first()
    if project is None or not project.is_visible_to(request.user):
        raise Http404("No such project")
    if not project.is_lead(request.user):
        raise PermissionDenied(
            "Only the project's leads and staff reach its items, reviews and results; SMEs review blind."
        )
    return project


class IdCursorPagination(CursorPagination):
    """Cursor pagination in id order: ``?cursor=`` from ``next``/``previous``, ``?page_size=`` 1 to 1000."""

    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def decode_cursor(self, request):
        """DRF's cursor, refused (404, "Invalid cursor") when its position is not an id."""
        cursor = super().decode_cursor(request)
        if cursor is not None and cursor.position is not None:
            try:
                valid = 0 <= int(cursor.position) < 2**63
            except ValueError:
                valid = False
            if not valid:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class ProjectScopedViewSet(viewsets.GenericViewSet):
    """A viewset under ``/api/projects/<project_slug>/``, reachable by the project's leads and staff.

    Subclasses set ``model`` and define ``scoped_queryset(project)``: the
    objects of that project the viewset serves. (While drf-spectacular builds
    the schema there is no request, hence no project: an empty queryset of
    ``model`` tells it the types.)
    """

    pagination_class = IdCursorPagination
    model = None

    def scoped_queryset(self, project: Project):
        raise NotImplementedError

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return self.model.objects.none()
        return self.scoped_queryset(self.get_project())

    def get_project(self) -> Project:
        if not hasattr(self, "_project"):
            self._project = project_for_api(self.request, self.kwargs["project_slug"])
        return self._project

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if not getattr(self, "swagger_fake_view", False):
            self.get_project()


class ProjectSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField(help_text="Your role: staff (who reach every project), lead or sme.")
    reject_reasons = serializers.ListField(
        child=serializers.CharField(max_length=200),
        min_length=1,
        max_length=9,
        required=False,
        validators=[validate_reject_reasons],
        help_text="Reasons SMEs pick from when rejecting (1 to 9, distinct; keys 1-9 pick them).",
    )

    class Meta:
        model = Project
        fields = ["id", "slug", "name", "guidelines", "reviews_per_item", "reject_reasons", "role", "created_at"]
        extra_kwargs = {"reviews_per_item": {"min_value": 1, "max_value": 20}}

    def get_role(self, project: Project) -> str:
        user = self.context["request"].user
        if user.is_staff:
            return "staff"
        return next(m.role for m in project.memberships.all() if m.user_id == user.pk)


@extend_schema(tags=["projects"])
@extend_schema_view(
    list=extend_schema(summary="Projects you are a member of (all, for staff)"),
    create=extend_schema(summary="Create a project (staff allowed to add projects); add its members in the admin"),
)
class ProjectViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    """Projects the user may see, looked up by slug; staff create them (``slug`` and ``name`` required)."""

    serializer_class = ProjectSerializer
    pagination_class = IdCursorPagination
    lookup_field = "slug"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Project.objects.none()
        return projects_for(self.request.user).prefetch_related("memberships")

    def create(self, request, *args, **kwargs) -> Response:
        # As in the admin: staff with the permission to add projects (superusers have it).
        if not (request.user.is_staff and request.user.has_perm("annotations.add_project")):
            raise PermissionDenied("Only staff allowed to add projects create them.")
        return super().create(request, *args, **kwargs)

    def perform_create(self, serializer) -> None:
        try:
            with transaction.atomic():
                serializer.save()
        except IntegrityError:  # the same slug, created by another request a moment ago
            raise serializers.ValidationError({"slug": ["project with this slug already exists."]}) from None


class ItemSerializer(serializers.ModelSerializer):
    gate_outcome = serializers.SerializerMethodField(
        help_text="accept, reject or pending (pending too for an item not gated yet)"
    )
    gate_basis = serializers.SerializerMethodField(
        help_text="what decided it before any rule veto: sme (ground truth), judge (the latest run's verdict) or "
        "none; a veto shows in gate_reasons"
    )
    gate_reasons = serializers.SerializerMethodField(help_text="the reasons of the label functions that vetoed it")
    in_sme_queue = serializers.BooleanField(read_only=True, help_text="whether the item is in the SME queue")
    answers_item = serializers.PrimaryKeyRelatedField(
        source="answers",
        read_only=True,
        allow_null=True,
        help_text="for a teacher's answer, the id of the item whose prompt it answers; null for any other item",
    )
    answers = serializers.SerializerMethodField(
        help_text="ids of the items that answer this one's prompt (the teacher's candidate responses), oldest first"
    )

    class Meta:
        model = Item
        fields = [
            "id",
            "external_id",
            "prompt",
            "context",
            "response",
            "reasoning",
            "answers_item",
            "answers",
            "reference",
            "source_model",
            "task_type",
            "metadata",
            "in_sme_queue",
            "gate_outcome",
            "gate_basis",
            "gate_reasons",
            "created_at",
        ]

    @staticmethod
    def _decision(item: Item):
        return getattr(item, "gate_decision", None)  # RelatedObjectDoesNotExist is an AttributeError

    @extend_schema_field(serializers.ChoiceField(choices=Outcome.values))
    def get_gate_outcome(self, item: Item) -> str:
        decision = self._decision(item)
        return decision.outcome if decision else Outcome.PENDING

    @extend_schema_field(serializers.ChoiceField(choices=Basis.values))
    def get_gate_basis(self, item: Item) -> str:
        decision = self._decision(item)
        return decision.basis if decision else Basis.NONE

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_gate_reasons(self, item: Item) -> list[str]:
        decision = self._decision(item)
        return list(decision.reasons) if decision else []

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField()))
    def get_answers(self, item: Item) -> list[int]:
        return sorted(answer.pk for answer in item.answered_by.all())  # prefetched by the view


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 date-time filter that compares in UTC (PostgreSQL refuses offsets beyond +-15:59)."""

    def filter(self, qs, value):
        if value is not None:
            try:
                value = value.astimezone(datetime.UTC)
            except OverflowError:
                raise serializers.ValidationError({self.field_name: ["date-time out of range once in UTC"]}) from None
        return super().filter(qs, value)


class ItemFilter(django_filters.FilterSet):
    # Exact, white space included: imports strip the ids they store, so no stripping is needed to find them.
    external_id = django_filters.CharFilter(strip=False)
    source_model = django_filters.CharFilter()
    task_type = django_filters.CharFilter()
    in_sme_queue = django_filters.BooleanFilter(method="filter_in_sme_queue")
    gate_outcome = django_filters.ChoiceFilter(choices=Outcome.choices, method="filter_gate_outcome")
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = Item
        fields = ["external_id", "source_model", "task_type", "in_sme_queue", "gate_outcome"]

    def filter_in_sme_queue(self, queryset, name, value):
        """Queued items are those with slots (``annotations.queue.in_sme_queue``)."""
        return queryset.filter(in_sme_queue()) if value else queryset.exclude(in_sme_queue())

    def filter_gate_outcome(self, queryset, name, value):
        """``pending`` also takes items not gated yet (the gate's rule 4: no review, no verdict)."""
        if value == Outcome.PENDING:
            return queryset.filter(Q(gate_decision__outcome=Outcome.PENDING) | Q(gate_decision__isnull=True))
        return queryset.filter(gate_decision__outcome=value)


@extend_schema(tags=["items"], parameters=[PROJECT_SLUG])
@extend_schema_view(
    list=extend_schema(summary="The project's items, filtered"),
)
class ItemViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """A project's items with their gate outcome (import them with ``POST .../import/``)."""

    serializer_class = ItemSerializer
    filterset_class = ItemFilter
    model = Item

    def scoped_queryset(self, project: Project):
        answers = Prefetch("answered_by", queryset=Item.objects.only("id", "answers_id"))
        items = Item.objects.filter(project=project).annotate(in_sme_queue=in_sme_queue())
        return items.select_related("gate_decision").prefetch_related(answers)


class ReviewSerializer(serializers.ModelSerializer):
    reviewer = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    external_id = serializers.CharField(source="item.external_id", read_only=True)

    class Meta:
        model = Review
        fields = [
            "id",
            "item",
            "external_id",
            "reviewer",
            "decision",
            "reason",
            "comment",
            "corrected_response",
            "origin",
            "seconds_spent",
            "created_at",
            "updated_at",
        ]


class ReviewFilter(django_filters.FilterSet):
    decision = django_filters.ChoiceFilter(choices=Decision.choices)
    origin = django_filters.ChoiceFilter(choices=Review.Origin.choices)
    reviewer = django_filters.CharFilter(field_name="reviewer__username")
    item = django_filters.NumberFilter(field_name="item_id")

    class Meta:
        model = Review
        fields = ["decision", "origin", "reviewer", "item"]


@extend_schema(tags=["reviews"], parameters=[PROJECT_SLUG])
@extend_schema_view(
    list=extend_schema(summary="SME reviews and imported labels of the project"),
)
class ReviewViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """SME reviews (and imported prior labels, which have no reviewer) of a project's items."""

    serializer_class = ReviewSerializer
    filterset_class = ReviewFilter
    model = Review

    def scoped_queryset(self, project: Project):
        return Review.objects.filter(item__project=project).select_related("reviewer", "item")


class ImportReportSerializer(serializers.Serializer):
    """What an import stored, and every line that it did not store with its reason."""

    created = serializers.IntegerField()
    existing = serializers.IntegerField()
    labels = serializers.IntegerField()
    blank = serializers.IntegerField(
        help_text="blank lines (JSONL) or rows (CSV: also rows whose every cell is empty) skipped, not errors"
    )
    errors = serializers.ListField(child=serializers.DictField(), help_text='[{"line": int, "reason": str}]')
    fatal = serializers.CharField(allow_blank=True)
    regating = serializers.BooleanField(
        help_text="true when items were created: the project's label functions and gate run again, on the Celery "
        "worker when there is one (until then the new items are pending)"
    )


class ImportJobSerializer(serializers.ModelSerializer):
    """An import run as a job (``annotations.tasks.run_import_job``): progress while it runs, then its report."""

    report = serializers.SerializerMethodField(
        help_text="the import report once the job has ended (for a failed job, what it stored before the fault); "
        "null while it is queued or running"
    )
    url = serializers.SerializerMethodField(help_text="this job in the API: poll it until status is done or failed")

    class Meta:
        model = ImportJob
        fields = [
            "id",
            "status",
            "filename",
            "format",
            "bytes_total",
            "bytes_read",
            "rows_read",
            "report",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "url",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "bytes_total": {"help_text": "the file's size, in bytes"},
            "bytes_read": {"help_text": "bytes of the file parsed so far"},
            "rows_read": {"help_text": "lines (JSONL) or rows (CSV) stored or refused so far"},
            "error": {"help_text": "why the job failed; empty unless status is failed"},
        }

    @extend_schema_field(ImportReportSerializer(allow_null=True))
    def get_report(self, job: ImportJob) -> dict | None:
        if not job.finished or not job.report:
            return None
        # As the synchronous import answers it: items created means the project is re-gated (the task asks).
        return {**job.report, "regating": job.report.get("created", 0) > 0}

    def get_url(self, job: ImportJob) -> str:
        path = reverse("import-job-detail", kwargs={"project_slug": job.project.slug, "pk": job.pk})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request else path


PREFER = OpenApiParameter(
    "Prefer",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    description="respond-async (RFC 7240): answer 202 with an import job at once, whatever the file's size",
)


@extend_schema(tags=["import and export"])
class ImportItemsApi(APIView):
    """POST a JSONL or CSV file (multipart field ``file``) to import items into a project.

    Optional fields: ``format`` (jsonl/csv; else from the file name),
    ``label_field`` (default ``human_label``). A file of at most
    ``LARRY_IMPORT_INLINE_MAX_BYTES`` (64 MiB by default) is imported in the
    request, which answers 200 with the import report:
    ``{"created", "existing", "labels", "blank", "errors": [{"line", "reason"}], "fatal", "regating"}``.
    A larger one, or any with the header ``Prefer: respond-async``
    (RFC 7240), answers 202 at once with an import job (``Location``: the
    job, ``GET .../imports/<id>/``), which a Celery worker (without a broker,
    a background thread of the web process) runs; poll it until its status
    is ``done`` or ``failed``, then its ``report`` is the same report.
    When items were created, the project is re-gated in the background
    (label functions, then the gate), so their prior labels count.
    """

    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        format = serializers.ChoiceField(choices=FORMATS, required=False)
        label_field = serializers.CharField(required=False, default="human_label")

    @extend_schema(
        parameters=[
            SLUG,
            PREFER,
            OpenApiParameter(
                "Location", OpenApiTypes.URI, OpenApiParameter.HEADER, response=[202], description="the import job"
            ),
            OpenApiParameter(
                "Preference-Applied",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[202],
                description="respond-async, when the request asked for it",
            ),
        ],
        request={"multipart/form-data": InputSerializer},
        responses={200: ImportReportSerializer, 202: ImportJobSerializer},
    )
    def post(self, request, slug: str) -> Response:
        project = project_for_api(request, slug)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        try:
            fmt = data.validated_data.get("format") or detect_format(upload.name)
        except ImportFormatError as exc:
            return Response({"format": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        asked = prefers_async(request)
        if asked or upload.size > settings.LARRY_IMPORT_INLINE_MAX_BYTES:
            return self.as_job(request, project, upload, fmt, data.validated_data["label_field"], asked=asked)
        try:
            report = import_items(
                project=project, stream=upload.file, fmt=fmt, label_field=data.validated_data["label_field"]
            )
        except BaseException:
            items_imported(project.pk)  # batches stored before the error count too
            raise
        if report.created:
            items_imported(project.pk)
        return Response({**report.as_dict(), "regating": report.created > 0})

    @staticmethod
    def as_job(request, project: Project, upload, fmt: str, label_field: str, *, asked: bool) -> Response:
        """202 with a new import job of ``upload``, queued (or, where tasks run in the caller, already run)."""
        job = import_job_create(
            project=project, upload=upload, fmt=fmt, import_labels=True, user=request.user, label_field=label_field
        )
        job.refresh_from_db()  # where the task ran in-process (commands, tests), it has ended already
        body = ImportJobSerializer(job, context={"request": request}).data
        headers = {"Location": body["url"]}
        if asked:
            headers["Preference-Applied"] = "respond-async"
        return Response(body, status=status.HTTP_202_ACCEPTED, headers=headers)


class NewestFirstPagination(IdCursorPagination):
    """``IdCursorPagination``, newest (highest id) first."""

    ordering = "-id"


@extend_schema(tags=["import and export"], parameters=[PROJECT_SLUG])
@extend_schema_view(
    list=extend_schema(summary="The project's import jobs, newest first"),
    retrieve=extend_schema(summary="One import job: its progress while it runs, then its report"),
)
class ImportJobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Imports run as jobs: REST imports answered 202 (``POST .../import/``) and files uploaded in the browser.
    Leads and staff, as the import itself."""

    serializer_class = ImportJobSerializer
    pagination_class = NewestFirstPagination
    model = ImportJob

    def scoped_queryset(self, project: Project):
        return ImportJob.objects.filter(project=project).select_related("project")


class SampleDrawInput(serializers.Serializer):
    size = serializers.IntegerField(min_value=1, max_value=1_000_000, help_text="How many items to draw.")
    design = serializers.ChoiceField(choices=SampleDraw.Design.values)
    seed = serializers.IntegerField(min_value=0, max_value=2**63 - 1, default=0)
    strata = serializers.ChoiceField(choices=STRATA_FIELDS, required=False, help_text="For the stratified design.")
    allocation = serializers.ChoiceField(choices=SampleDraw.Allocation.values, default="proportional")
    uniform_share = serializers.FloatField(
        min_value=0.01, max_value=1.0, default=DEFAULT_UNIFORM_SHARE, help_text="For the confidence-weighted design."
    )


class SampleDrawOutput(serializers.ModelSerializer):
    created_by = serializers.StringRelatedField()

    class Meta:
        model = SampleDraw
        fields = [
            "id",
            "design",
            "strata",
            "allocation",
            "uniform_share",
            "seed",
            "size",
            "drawn",
            "population",
            "created_by",
            "created_at",
            "status",
            "error",
            "started_at",
            "finished_at",
        ]


@extend_schema(tags=["sampling"], parameters=[SLUG])
class SampleDrawApi(APIView):
    """The project's recorded SME sample draws (GET), and a new one (POST, leads and staff): the drawn items go
    to the SME queue, each with its inclusion probability (``annotations.sampling``; listed by
    ``GET .../samples/<id>/members/``). 400 says what is wrong."""

    @extend_schema(responses={200: SampleDrawOutput(many=True)}, summary="The project's sample draws, newest first")
    def get(self, request, slug: str) -> Response:
        project = project_for_api(request, slug)
        return Response(SampleDrawOutput(draws_for(project), many=True).data)

    @extend_schema(
        request=SampleDrawInput,
        parameters=[
            OpenApiParameter(
                "Prefer",
                location=OpenApiParameter.HEADER,
                required=False,
                description="``respond-async``: answer 202 at once, whatever the size",
            )
        ],
        responses={201: SampleDrawOutput, 202: SampleDrawOutput},
        summary="Draw items for the SMEs",
    )
    def post(self, request, slug: str) -> Response:
        """201 with the draw made; or 202 Accepted with the draw ``queued`` and a ``Location`` to poll
        (``GET .../samples/<id>/``) when the client sends ``Prefer: respond-async`` (then also
        ``Preference-Applied: respond-async``) or asks for more than ``LARRY_SAMPLE_INLINE_MAX_ITEMS`` items."""
        project = project_for_api(request, slug)
        data = SampleDrawInput(data=request.data)
        data.is_valid(raise_exception=True)
        asked = prefers_async(request)
        later = asked or data.validated_data["size"] > settings.LARRY_SAMPLE_INLINE_MAX_ITEMS
        try:
            draw = sample_draw(project=project, user=request.user, later=later, **data.validated_data)
        except SamplingError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        if not later:
            return Response(SampleDrawOutput(draw).data, status=status.HTTP_201_CREATED)
        draw.refresh_from_db()  # made already when tasks run in the caller (no broker, outside a web process)
        where = request.build_absolute_uri(reverse("annotations:api_sample", args=[project.slug, draw.pk]))
        response = Response(SampleDrawOutput(draw).data, status=status.HTTP_202_ACCEPTED, headers={"Location": where})
        if asked:
            response["Preference-Applied"] = "respond-async"
        return response


@extend_schema(tags=["sampling"], parameters=[SLUG])
class SampleDrawDetailApi(APIView):
    """One recorded draw (leads and staff): poll a draw made in the background until its ``status`` is ``done``
    (every item queued) or ``failed`` (``error`` says why; nothing of it was recorded). 404 for a draw of
    another project."""

    @extend_schema(responses={200: SampleDrawOutput}, summary="One sample draw, with its status")
    def get(self, request, slug: str, draw_id: int) -> Response:
        project = project_for_api(request, slug)
        draw = get_object_or_404(SampleDraw.objects.select_related("created_by"), project=project, pk=draw_id)
        return Response(SampleDrawOutput(draw).data)


class SampleMemberSerializer(serializers.ModelSerializer):
    external_id = serializers.CharField(source="item.external_id", read_only=True)

    class Meta:
        model = SampleMembership
        fields = ["id", "item", "external_id", "inclusion_probability", "uniform_slice", "stratum"]


@extend_schema(tags=["sampling"], parameters=[PROJECT_SLUG])
@extend_schema_view(list=extend_schema(summary="The items a draw chose, with their inclusion probabilities"))
class SampleMemberViewSet(mixins.ListModelMixin, ProjectScopedViewSet):
    """The items one recorded draw chose (``GET .../samples/<draw_id>/members/``): each with the probability the
    design gave it of being drawn (``inclusion_probability``, in (0, 1]; an estimate weights its SME label by
    the inverse), whether the design's uniform slice drew it, and its stratum. Leads and staff."""

    serializer_class = SampleMemberSerializer
    model = SampleMembership

    def scoped_queryset(self, project: Project):
        draw = get_object_or_404(SampleDraw, project=project, pk=self.kwargs["draw_id"])
        return SampleMembership.objects.filter(draw=draw).select_related("item")
