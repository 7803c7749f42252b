"""REST API of the judging app: judge runs and verdicts, label functions, the gating policy, the certificate.

Same rules as ``annotations.api``: token or session authentication, projects
visible to members only (404), content for leads and staff only (403 for
SMEs). Lists are cursor-paginated.
"""

import django_filters
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.api import PROJECT_SLUG, SLUG, ProjectScopedViewSet, project_for_api
from annotations.models import Decision, Project, ProjectChange
from annotations.project_settings import project_change_record
from judging.backends import JudgeUnreachable
from judging.estimate import accepted_set_precision
from judging.models import (
    NO_POLICY,
    GatingPolicyChange,
    JudgeRun,
    LabelFunction,
    Verdict,
)
from judging.selectors import (
    certificate_held_back,
    certification_applied,
    certification_current,
    certification_staleness,
    gating_policy,
    run_progress,
)
from judging.services import (
    CertificationError,
    LearnFromError,
    PolicyError,
    RunBusy,
    certification_set,
    gating_policy_compute,
    gating_policy_set,
    judge_endpoint_check,
    judge_run_create,
    judge_run_queue_errors,
)
from larry_web.parsers import JSONParser


class PolicyTierInput(serializers.Serializer):
    run = serializers.IntegerField(min_value=1, help_text="A finished run of the project.")
    threshold = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0.5,
        max_value=1.0,
        help_text="Least calibrated certainty; null: the verdict alone decides.",
    )


class GatingPolicyInput(serializers.Serializer):
    tiers = PolicyTierInput(many=True, help_text="In the order they are tried; [] leaves the gate to SMEs and rules.")
    target_agreement = serializers.FloatField(required=False, allow_null=True, min_value=0.5, max_value=0.999)
    risk = serializers.FloatField(required=False, allow_null=True, min_value=0.001, max_value=0.5)
    choose_thresholds = serializers.BooleanField(
        default=False,
        help_text="true: Larry chooses each tier's threshold from the SME labels for target_agreement and risk "
        "(both required; the tiers' thresholds must be null), as the policy page's cascade form does.",
    )

    def validate(self, attrs):
        if attrs.get("choose_thresholds"):
            if attrs.get("target_agreement") is None or attrs.get("risk") is None:
                raise serializers.ValidationError("choose_thresholds needs target_agreement and risk")
            if any(tier.get("threshold") is not None for tier in attrs["tiers"]):
                raise serializers.ValidationError("choose_thresholds chooses the thresholds: leave them null")
            if not attrs["tiers"]:
                raise serializers.ValidationError("choose_thresholds needs at least one tier")
        return attrs


class GatingPolicyChangeOutput(serializers.ModelSerializer):
    changed_by = serializers.StringRelatedField()

    class Meta:
        model = GatingPolicyChange
        fields = ["id", "changed_by", "changed_at", "before", "after"]


def _policy_body(project: Project) -> dict:
    policy = gating_policy(project)
    return {
        "policy": policy.snapshot() if policy else None,
        "label": policy.label if policy else NO_POLICY,
        "updated_by": str(policy.updated_by) if policy and policy.updated_by else None,
        "updated_at": policy.updated_at if policy else None,
        "changes": GatingPolicyChangeOutput(
            GatingPolicyChange.objects.filter(project=project).select_related("changed_by")[:50], many=True
        ).data,
    }


@extend_schema(tags=["judge runs"], parameters=[SLUG])
class GatingPolicyApi(APIView):
    """The project's gating policy (which runs decide, in which order, from what certainty) and its change log.

    GET for leads and staff (403 for SMEs, 404 for outsiders); POST sets it (leads and staff), logs the change
    and queues a re-gating. A new run never gates until it is chosen here or on the policy page.
    """

    parser_classes = [JSONParser]

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="The gating policy in force and its last 50 changes")
    def get(self, request, slug: str) -> Response:
        return Response(_policy_body(project_for_api(request, slug)))

    @extend_schema(
        request=GatingPolicyInput,
        responses={200: OpenApiTypes.OBJECT, 400: OpenApiResponse(description="A run not finished or not here")},
        summary="Set the gating policy (leads); logged, re-gating queued",
    )
    def post(self, request, slug: str) -> Response:
        project = project_for_api(request, slug)
        data = GatingPolicyInput(data=request.data)
        data.is_valid(raise_exception=True)
        runs = JudgeRun.objects.filter(project=project).in_bulk([t["run"] for t in data.validated_data["tiers"]])
        missing = [t["run"] for t in data.validated_data["tiers"] if t["run"] not in runs]
        if missing:
            raise serializers.ValidationError(
                {"tiers": [f"no judge run {run_id} in this project" for run_id in missing]}
            )
        body = data.validated_data
        try:
            with transaction.atomic():
                if body["choose_thresholds"]:
                    gating_policy_compute(
                        project=project,
                        runs=[runs[t["run"]] for t in body["tiers"]],
                        target=body["target_agreement"],
                        risk=body["risk"],
                        user=request.user,
                    )
                else:
                    gating_policy_set(
                        project=project,
                        tiers=[(runs[t["run"]], t.get("threshold")) for t in body["tiers"]],
                        target=body.get("target_agreement"),
                        risk=body.get("risk"),
                        user=request.user,
                    )
        except PolicyError as exc:
            raise serializers.ValidationError({"tiers": [str(exc)]}) from exc
        return Response(_policy_body(project))


@extend_schema(tags=["judge runs"], parameters=[SLUG])
class EstimateApi(APIView):
    """The accepted set's precision (the share an SME would accept) and the share of the rejected set an SME
    would have accepted, each by PPI++ and classically, with n and 95 % intervals, or notes saying why not
    (``judging.estimate.accepted_set_precision``). Leads and staff (403 for SMEs, 404 for outsiders)."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Precision of the accepted set, with intervals")
    def get(self, request, slug: str) -> Response:
        return Response(accepted_set_precision(project_for_api(request, slug)))


def _certificate_body(certification) -> dict:
    if certification is None:
        return {"certificate": None, "note": "No lead has set a target: POST target and delta to certify."}
    return {
        "certificate": {
            "id": certification.pk,
            "target": certification.target,
            "delta": certification.delta,
            "threshold": certification.threshold,
            "method": certification.method,
            "n": certification.n,
            "n_labelled": certification.n_labelled,
            "bound": certification.bound,
            "certified": certification.certified,
            "policy": certification.policy,
            "design": certification.design,
            "result": certification.result,
            "created_by": certification.created_by.username if certification.created_by else None,
            "created_at": certification.created_at,
            "since": certification_staleness(certification),
            "applied": certification_applied(certification),
            "held_back": certificate_held_back(certification),
        }
    }


class CertificateSerializer(serializers.Serializer):
    target = serializers.FloatField(min_value=0.5, max_value=0.999, help_text="Precision at least this (0.5 to 0.999).")
    delta = serializers.FloatField(
        min_value=0.001, max_value=0.5, help_text="With confidence 1 - delta (0.001 to 0.5)."
    )


@extend_schema(tags=["judge runs"], parameters=[SLUG])
class CertificateApi(APIView):
    """The certificate of the accepted set in force (GET), or certify it now for a target (POST ``{"target",
    "delta"}``: precision ≥ target with confidence 1 - delta; ``services.certification_set``, Learn-then-Test on
    uniform-slice SME labels). ``result`` has the reason when nothing is certified and ``next``: how many more SME
    labels would certify how many more items; ``since`` what changed since it was computed
    (``selectors.certification_staleness``: new SME labels, the gating policy, its calibration), as it is never
    recomputed by itself, with ``void`` and ``void_reason`` when the policy or a calibration changed (the gate then
    certifies nothing: ``selectors.certification_void``); ``applied`` whether the gate's decisions apply it yet
    (``selectors.certification_applied``: ``{"applied", "generation", "done", "statement"}``; until then exports
    refuse); ``held_back`` ``{"applied", "pending", "queued", "statement"}`` the judge accepts the gate leaves
    pending for it and how many of them wait in the SME queue (before it is applied: the count it implies,
    ``selectors.certificate_held_back``). Leads and staff (403 for SMEs, 404 for outsiders)."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="The accepted set's certificate")
    def get(self, request, slug: str) -> Response:
        return Response(_certificate_body(certification_current(project_for_api(request, slug))))

    @extend_schema(request=CertificateSerializer, responses={201: OpenApiTypes.OBJECT}, summary="Certify now")
    def post(self, request, slug: str) -> Response:
        project = project_for_api(request, slug)
        body = CertificateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            certification = certification_set(project=project, user=request.user, **body.validated_data)
        except CertificationError as exc:
            raise serializers.ValidationError({"target": [str(exc)]}) from exc
        return Response(_certificate_body(certification), status=status.HTTP_201_CREATED)


class JudgeRunStartSerializer(serializers.Serializer):
    local = serializers.BooleanField(required=False, default=False)
    learn_from = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class JudgeRunSerializer(serializers.ModelSerializer):
    judge = serializers.CharField(source="judge_label", read_only=True)
    learned_from = serializers.CharField(read_only=True, help_text="A local classifier run's training labels.")
    cost = serializers.DecimalField(max_digits=20, decimal_places=6, read_only=True)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = JudgeRun
        fields = [
            "id",
            "judge",
            "learned_from",
            "backend",
            "model",
            "base_url",
            "config",
            "status",
            "error",
            "items_total",
            "items_done",
            "items_error",
            "tokens_in",
            "tokens_out",
            "cost",
            "progress",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_progress(self, run: JudgeRun) -> dict:
        """``{"done", "errors", "total", "percent", "rate_per_s", "eta_s"}``."""
        return {k: v for k, v in run_progress(run).items() if isinstance(v, int | float | None)}


@extend_schema(tags=["judge runs"], parameters=[PROJECT_SLUG])
@extend_schema_view(
    list=extend_schema(summary="The project's judge runs, newest first"),
    create=extend_schema(
        request=inline_serializer(
            "JudgeRunStart",
            {
                "local": serializers.BooleanField(
                    required=False, help_text="The local classifier, whatever the judge."
                ),
                "learn_from": serializers.IntegerField(
                    required=False, help_text="A finished LLM run whose verdicts the local classifier also learns from."
                ),
            },
        ),
        summary="Start a judge run over all items (leads and staff); 502 when the judge endpoint does not answer",
    ),
)
class JudgeRunViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, ProjectScopedViewSet):
    """Judge runs with their snapshot (``config``), progress, tokens and cost."""

    serializer_class = JudgeRunSerializer
    model = JudgeRun

    def scoped_queryset(self, project: Project):
        return JudgeRun.objects.filter(project=project)

    def create(self, request, *args, **kwargs) -> Response:
        project = self.get_project()  # the project's leads and staff
        body = JudgeRunStartSerializer(data=request.data or {})
        body.is_valid(raise_exception=True)
        teacher = None
        if body.validated_data.get("learn_from") is not None:
            teacher = JudgeRun.objects.filter(pk=body.validated_data["learn_from"], project=project).first()
            if teacher is None:
                raise serializers.ValidationError({"learn_from": ["no such run in this project"]})
        if not body.validated_data.get("local") and teacher is None:
            try:
                judge_endpoint_check(project=project)
            except JudgeUnreachable as exc:
                return Response({"detail": str(exc)}, status=status.HTTP_502_BAD_GATEWAY)
        try:
            with transaction.atomic():
                run = judge_run_create(
                    project=project,
                    user=request.user,
                    local=body.validated_data.get("local", False),
                    learn_from=teacher,
                )
        except LearnFromError as exc:
            raise serializers.ValidationError({"learn_from": [str(exc)]}) from None
        project_change_record(
            project=project, user=request.user, action=ProjectChange.Action.RUN_START, run=run.pk, judge=run.judge_label
        )
        run.refresh_from_db()
        return Response(self.get_serializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        responses={200: inline_serializer("QueuedErrors", {"queued": serializers.IntegerField()})},
        summary="Queue the run's items without a verdict for SME review (leads)",
    )
    @action(detail=True, methods=["post"], url_path="queue-errors")
    def queue_errors(self, request, project_slug: str, pk: str) -> Response:
        """Items whose judging failed for good stay pending; this sends them to the SMEs (safe to repeat)."""
        try:
            return Response({"queued": judge_run_queue_errors(run=self.get_object())})
        except RunBusy as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)


class VerdictSerializer(serializers.ModelSerializer):
    external_id = serializers.CharField(source="item.external_id", read_only=True)

    class Meta:
        model = Verdict
        fields = [
            "id",
            "item",
            "external_id",
            "verdict",
            "rationale",
            "reasoning",
            "confidence",
            "confidence_calibrated",
            "tokens_in",
            "tokens_out",
            "latency_ms",
            "error",
            "error_class",
            "raw_reply",
            "attempts",
            "answered_by",
            "created_at",
        ]


class VerdictFilter(django_filters.FilterSet):
    verdict = django_filters.ChoiceFilter(choices=Decision.choices)
    error = django_filters.BooleanFilter(method="filter_error", help_text="true: only errors; false: only verdicts")
    item = django_filters.NumberFilter(field_name="item_id")
    error_class = django_filters.ChoiceFilter(choices=Verdict.ErrorClass.choices)

    class Meta:
        model = Verdict
        fields = ["verdict", "item", "error_class"]

    def filter_error(self, queryset, name, value):
        return queryset.exclude(error="") if value else queryset.filter(error="")


RUN_ID = OpenApiParameter("run_id", OpenApiTypes.INT, OpenApiParameter.PATH, description="Judge run id")


@extend_schema(tags=["judge runs"], parameters=[PROJECT_SLUG, RUN_ID])
@extend_schema_view(list=extend_schema(summary="A run's verdicts and errors"))
class VerdictViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Verdicts of one judge run; an item whose judging failed has ``verdict`` empty and ``error`` set."""

    serializer_class = VerdictSerializer
    filterset_class = VerdictFilter
    model = Verdict

    def scoped_queryset(self, project: Project):
        run = JudgeRun.objects.filter(project=project, pk=int(self.kwargs["run_id"])).first()
        if run is None:
            raise NotFound("No such judge run in this project.")
        return Verdict.objects.filter(run=run).select_related("item")


class LabelFunctionSerializer(serializers.ModelSerializer):
    class Meta:
        model = LabelFunction
        fields = [
            "id",
            "name",
            "kind",
            "params",
            "field",
            "task_types",
            "reason",
            "active",
            "version",
            "created_at",
            "updated_at",
        ]


@extend_schema(tags=["label functions"], parameters=[PROJECT_SLUG])
@extend_schema_view(
    list=extend_schema(summary="The project's label functions (edited in the admin)"),
)
class LabelFunctionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedViewSet):
    """Label functions with their current version; staff edit them in the Django admin."""

    serializer_class = LabelFunctionSerializer
    filterset_fields = ["active", "kind"]
    model = LabelFunction

    def scoped_queryset(self, project: Project):
        return LabelFunction.objects.filter(project=project)
