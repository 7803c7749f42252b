"""Export the accepted set as OpenAI chat fine-tuning JSONL, streamed.

One line per accepted item, in item order::

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": <response>}]}

(the format of OpenAI's chat fine-tuning guide); an SME's corrected response,
when there is one, wins over the original. When the item has a context
(retrieved passages), the user turn is ``"Context:\\n<context>\\n\\n<prompt>"``
so the student sees what the teacher saw.
"""

import json
from collections.abc import Iterator

from django.db.models import OuterRef, Subquery

from annotations.models import Item, Project, Review
from judging.models import GateDecision


def chat_record(*, prompt: str, context: str, response: str) -> dict:
    """One training example as ``{"messages": [user, assistant]}``."""
    user = f"Context:\n{context}\n\n{prompt}" if context else prompt
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}]}


def accepted_items(project: Project):
    """The accepted set: items whose gate decision is accept, in item order."""
    return Item.objects.filter(project=project, gate_decision__outcome=GateDecision.Outcome.ACCEPT).order_by("id")


def iter_chat_jsonl(project: Project) -> Iterator[bytes]:
    """UTF-8 JSONL lines of the accepted set, one query streamed with a server-side cursor where available.

    Where an SME wrote a corrected response, the latest correction is the
    assistant turn instead of the original response.
    """
    corrected = (
        Review.objects.filter(item=OuterRef("pk"))
        .exclude(corrected_response="")
        .order_by("-updated_at", "-id")
        .values("corrected_response")[:1]
    )
    rows = (
        accepted_items(project)
        .annotate(corrected=Subquery(corrected))
        .values_list("prompt", "context", "response", "corrected")
        .iterator(chunk_size=2000)
    )
    for prompt, context, original, correction in rows:
        response = correction or original
        line = json.dumps(chat_record(prompt=prompt, context=context, response=response), ensure_ascii=False)
        yield (line + "\n").encode()
