"""REST API of the judging app: the accepted set, streamed."""

from django.http import StreamingHttpResponse
from rest_framework.views import APIView

from annotations.api import project_for_api
from judging.export import in_blocks, iter_chat_jsonl
from judging.selectors import latest_finished_run


class ExportChatJsonlApi(APIView):
    """GET the project's accepted set as OpenAI chat fine-tuning JSONL, streamed.

    Token-authenticated (``Authorization: Token <key>``). The judge whose
    verdicts fed the gate is named in the ``X-Larry-Judge`` header.
    """

    def get(self, request, slug: str) -> StreamingHttpResponse:
        project = project_for_api(request, slug)
        run = latest_finished_run(project)
        response = StreamingHttpResponse(
            in_blocks(iter_chat_jsonl(project)), content_type="application/jsonl; charset=utf-8"
        )
        response["Content-Disposition"] = f'attachment; filename="{project.slug}-accepted.jsonl"'
        response["X-Larry-Judge"] = run.judge_label if run else "none (SME ground truth only)"
        return response
