"""REST API of the distillation app: training-set snapshots, teacher runs, and the accepted set streamed as
chat JSONL.

Same rules as ``annotations.api``: token or session authentication, projects
visible to members only (404), content for leads and staff only (403 for
SMEs). Lists are cursor-paginated. Paths and router basenames (``training-set``)
are those the judging app gave them before the move; the export's route name
moved with its namespace (``judging:api_export_chat`` is ``distillation:api_export_chat``).
"""

from django.db import transaction
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.api import PROJECT_SLUG, SLUG, ProjectScopedViewSet, project_for_api
from annotations.models import Project
from distillation import teacher_runs, training_sets
from distillation.export import in_blocks, iter_chat_jsonl
from distillation.models import TeacherRun, TrainingSet, TrainingSetRow
from distillation.serializers import (
    TeacherRunSerializer,
    TeacherRunStartSerializer,
    TrainingSetReportSerializer,
    TrainingSetSerializer,
)
from distillation.teacher import NoTeacher, TeacherUnreachable
from judging.models import NO_POLICY
from judging.selectors import certification_unapplied, gating_policy
from larry_web.parsers import JSONParser

CONTENT_TYPES = {
    TrainingSet.Format.CSV: "text/csv; charset=utf-8",
}
JSONL = "application/jsonl; charset=utf-8"


@extend_schema(tags=["import and export"])
class ExportChatJsonlApi(APIView):
    """GET the project's accepted set as OpenAI chat fine-tuning JSONL, streamed (as it is now, not a snapshot).

    Token-authenticated (``Authorization: Token <key>``). The gating policy
    whose judges fed the gate is named in the ``X-Larry-Judge`` header. For a
    frozen, hashed, reproducible set, create a training set instead. 409
    (JSON ``{"detail"}``) while the gate has not yet applied the certificate in
    force (``selectors.certification_unapplied``): its stored decisions may
    still hold judge accepts the certificate holds back.
    """

    @extend_schema(
        parameters=[SLUG],
        responses={
            (200, "application/jsonl"): OpenApiTypes.BINARY,
            409: OpenApiResponse(description="The gate is still applying the certificate in force."),
        },
    )
    def get(self, request, slug: str) -> StreamingHttpResponse | Response:
        project = project_for_api(request, slug)
        if unapplied := certification_unapplied(project):
            return Response({"detail": unapplied}, status=status.HTTP_409_CONFLICT)
        policy = gating_policy(project)
        response = StreamingHttpResponse(in_blocks(iter_chat_jsonl(project)), content_type=JSONL)
        response["Content-Disposition"] = f'attachment; filename="{project.slug}-accepted.jsonl"'
        label = policy.label if policy else NO_POLICY
        # A header is one line of Latin-1: the label's non-ASCII characters (a judge's model name, "≥") escaped.
        # One line of ASCII: a staff-set model name may hold line breaks or other characters no header can carry.
        response["X-Larry-Judge"] = " ".join(label.split()).encode("ascii", "backslashreplace").decode("ascii")
        return response


SPLIT = OpenApiParameter(
    "split",
    OpenApiTypes.STR,
    enum=[choice for choice, _ in TrainingSetRow.Split.choices],
    description="One split only; without it, train rows then validation rows (the file ``sha256`` is of).",
)


@extend_schema(tags=["training sets"], parameters=[PROJECT_SLUG])
@extend_schema_view(
    list=extend_schema(summary="The project's training-set snapshots, newest first"),
    create=extend_schema(summary="Snapshot a training set (built in the background)"),
)
class TrainingSetViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    ProjectScopedViewSet,
):
    """Training-set snapshots: create one (202-style: ``status`` is ``building`` until built), poll, download."""

    serializer_class = TrainingSetSerializer
    parser_classes = [JSONParser]  # the options nest (filters): JSON only, never a silently flattened form
    model = TrainingSet

    def scoped_queryset(self, project: Project):
        return TrainingSet.objects.filter(project=project).select_related("project")

    def create(self, request, *args, **kwargs) -> Response:
        with transaction.atomic():
            training_set = training_sets.training_set_create(
                project=self.get_project(), options=request.data, user=request.user
            )
        training_set.refresh_from_db()
        return Response(self.get_serializer(training_set).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=TrainingSetReportSerializer)
    @action(detail=True)
    def report(self, request, project_slug: str, pk: str) -> Response:
        """Every selected item that is not a row: duplicates (with the row they repeat) and unwritable ones (why)."""
        training_set = self.get_object()
        return Response(
            {
                "duplicates": training_set.report.get("duplicates", []),
                "unwritable": training_set.report.get("unwritable", []),
            }
        )

    @extend_schema(
        parameters=[SPLIT],
        responses={
            (200, "application/jsonl"): OpenApiTypes.BINARY,
            (200, "text/csv"): OpenApiTypes.BINARY,
            409: OpenApiResponse(description="The set is not built (yet)."),
        },
    )
    @action(detail=True)
    def download(self, request, project_slug: str, pk: str):
        """The snapshot's file, streamed; ``X-Larry-Sha256`` is the sha256 of exactly these bytes."""
        training_set = self.get_object()
        if training_set.status != TrainingSet.Status.READY:
            return Response(
                {"detail": f"training set {training_set.pk} is {training_set.status}, not ready"},
                status=status.HTTP_409_CONFLICT,
            )
        split = request.query_params.get("split") or None
        if split not in (None, *TrainingSetRow.Split.values):
            return Response({"split": [f"expected one of {', '.join(TrainingSetRow.Split.values)}"]}, status=400)
        extension = "csv" if training_set.format == TrainingSet.Format.CSV else "jsonl"
        name = f"{training_set.project.slug}-{training_set.format}-{training_set.pk}{'-' + split if split else ''}"
        response = StreamingHttpResponse(
            training_sets.iter_file(training_set, split), content_type=CONTENT_TYPES.get(training_set.format, JSONL)
        )
        response["Content-Disposition"] = f'attachment; filename="{name}.{extension}"'
        response["X-Larry-Sha256"] = training_set.files[split]["sha256"] if split else training_set.sha256
        return response


@extend_schema(tags=["teacher runs"], parameters=[PROJECT_SLUG])
@extend_schema_view(
    list=extend_schema(summary="The project's teacher runs, newest first, with progress and results"),
    create=extend_schema(
        summary="Start a teacher run (Sensei Larry writes a response for each chosen item)",
        request=TeacherRunStartSerializer,
    ),
)
class TeacherRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Teacher runs: POST ``{"items": "rejected"|"all"|"missing"}`` or ``{"item_ids": [...]}`` (and ``"judge":
    true`` to have the gating policy judge the answers when it finishes) to start one (400 when the project has no
    teacher, or ``item_ids`` name items that are not its originals; 502 naming the URL and the fault when it does
    not answer a connection check; 409 naming the run when every chosen item is being answered by a queued or
    running run); GET to follow its progress; ``cancel`` and ``resume``."""

    serializer_class = TeacherRunSerializer
    parser_classes = [JSONParser]
    model = TeacherRun

    def scoped_queryset(self, project: Project):
        return TeacherRun.objects.filter(project=project)

    def create(self, request, *args, **kwargs) -> Response:
        start = TeacherRunStartSerializer(data=request.data)
        start.is_valid(raise_exception=True)
        item_ids = start.validated_data.get("item_ids")
        selection = TeacherRun.Selection.ITEMS if item_ids is not None else start.validated_data["items"]
        project = self.get_project()
        try:
            if item_ids is not None:
                teacher_runs.item_ids_check(project, item_ids)  # before the teacher is asked anything
            teacher_runs.teacher_check(project)
            run = teacher_runs.teacher_run_create(
                project=project,
                selection=selection,
                user=request.user,
                item_ids=item_ids,
                judge=start.validated_data["judge"],
            )
        except TeacherUnreachable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        except teacher_runs.TeacherRunBusy as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except NoTeacher as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        except ValueError as exc:  # item_ids that are not the project's originals
            return Response({"item_ids": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        run.refresh_from_db()
        return Response(self.get_serializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def cancel(self, request, project_slug: str, pk: str) -> Response:
        """Stop the run; answers written so far stay. 409 when it had ended."""
        run = self.get_object()
        if not teacher_runs.teacher_run_cancel(run=run):
            return Response({"detail": f"teacher run {run.pk} is {run.status}"}, status=status.HTTP_409_CONFLICT)
        run.refresh_from_db()
        return Response(self.get_serializer(run).data)

    @extend_schema(request=None)
    @action(detail=True, methods=["post"])
    def resume(self, request, project_slug: str, pk: str) -> Response:
        """Go on with a cancelled or failed run; ``?retry_failed=1`` also asks again for the answers not stored,
        of a finished run too. 409 while it runs, and for a finished run with nothing to ask again."""
        run = self.get_object()
        try:
            teacher_runs.teacher_run_resume(run=run, retry_failed=request.query_params.get("retry_failed") == "1")
        except teacher_runs.TeacherRunBusy as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        run.refresh_from_db()
        return Response(self.get_serializer(run).data)
