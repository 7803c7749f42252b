"""REST API of the annotations app: import."""

from django.http import Http404
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from annotations.importers import FORMATS, ImportFormatError, detect_format, import_items
from annotations.models import Project


def project_for_api(request, slug: str) -> Project:
    """The project if the token's user leads it or is staff: 404 for outsiders, 403 for SMEs.

    Importing (prior labels become ground truth) and exporting (the judge's and
    the rules' results) are for leads; SMEs review blind.
    """
    project = Project.objects.filter(slug=slug).first()
    if project is None or not project.is_visible_to(request.user):
        raise Http404("No such project")
    if not project.is_lead(request.user):
        raise PermissionDenied("Only project leads and staff import and export.")
    return project


class ImportItemsApi(APIView):
    """POST a JSONL or CSV file (multipart field ``file``) to import items into a project.

    Optional fields: ``format`` (jsonl/csv; else from the file name),
    ``label_field`` (default ``human_label``). Answers 200 with the import
    report: ``{"created", "existing", "labels", "errors": [{"line", "reason"}], "fatal"}``.
    """

    parser_classes = [MultiPartParser]

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField()
        format = serializers.ChoiceField(choices=FORMATS, required=False)
        label_field = serializers.CharField(required=False, default="human_label")

    def post(self, request, slug: str) -> Response:
        project = project_for_api(request, slug)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        try:
            fmt = data.validated_data.get("format") or detect_format(upload.name)
        except ImportFormatError as exc:
            return Response({"format": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        report = import_items(
            project=project, stream=upload.file, fmt=fmt, label_field=data.validated_data["label_field"]
        )
        return Response(report.as_dict())
