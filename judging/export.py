"""Export the accepted set as OpenAI chat fine-tuning JSONL, streamed.

One line per accepted item, in item order::

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": <response>}]}

(the format of OpenAI's chat fine-tuning guide). When the item has a context
(retrieved passages), the user turn is ``"Context:\\n<context>\\n\\n<prompt>"``
so the student sees what the teacher saw.
"""

import json
from collections.abc import Iterator

from annotations.models import Item, Project
from judging.models import GateDecision


def chat_record(*, prompt: str, context: str, response: str) -> dict:
    """One training example as ``{"messages": [user, assistant]}``."""
    user = f"Context:\n{context}\n\n{prompt}" if context else prompt
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}]}


def accepted_items(project: Project):
    """The accepted set: items whose gate decision is accept, in item order."""
    return Item.objects.filter(project=project, gate_decision__outcome=GateDecision.Outcome.ACCEPT).order_by("id")


def iter_chat_jsonl(project: Project) -> Iterator[bytes]:
    """UTF-8 JSONL lines of the accepted set, one query streamed with a server-side cursor where available."""
    rows = accepted_items(project).values_list("prompt", "context", "response").iterator(chunk_size=2000)
    for prompt, context, response in rows:
        line = json.dumps(chat_record(prompt=prompt, context=context, response=response), ensure_ascii=False)
        yield (line + "\n").encode()
