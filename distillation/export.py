"""Export the accepted set as OpenAI chat fine-tuning JSONL, streamed.

One line per accepted item, in item order::

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": <response>}]}

(the format of OpenAI's chat fine-tuning guide); an SME's corrected response,
when there is one, wins over the original. When the item has a context
(retrieved passages), the user turn is ``"Context:\\n<context>\\n\\n<prompt>"``
so the student sees what the teacher saw.

The bytes are those of ``distillation.jsonl.json_line(chat_record(...))`` (that is
``json.dumps(..., ensure_ascii=False)`` with U+0080-U+009F, U+2028 and U+2029
escaped, so no reader splits a record) plus a newline; orjson escapes the two
strings (it escapes exactly as the standard library does with
``ensure_ascii=False``, and is several times faster). Rows are read in pages
by id, so memory does not grow with the size of the accepted set and the
first line comes at once.
"""

from collections.abc import Iterable, Iterator

import orjson
from django.db import connection

from annotations.importers import read_ahead
from annotations.models import Item, Project, Review
from distillation.jsonl import escape_unicode_line_breaks
from judging.models import GateDecision

# One read from the database; big enough that per-chunk round trips do not count.
CHUNK_ROWS = 2000
# The first read is small, so the first bytes leave at once.
FIRST_PAGE_ROWS = 200
# What a streamed response sends at a time: whole lines, about this many bytes.
BLOCK_BYTES = 64 * 1024

_USER = b'{"messages": [{"role": "user", "content": '
_ASSISTANT = b'}, {"role": "assistant", "content": '
_END = b"}]}\n"


def chat_record(*, prompt: str, context: str, response: str) -> dict:
    """One training example as ``{"messages": [user, assistant]}``."""
    user = f"Context:\n{context}\n\n{prompt}" if context else prompt
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": response}]}


def accepted_items(project: Project):
    """The accepted set: items whose gate decision is accept, in item order."""
    return Item.objects.filter(project=project, gate_decision__outcome=GateDecision.Outcome.ACCEPT).order_by("id")


def _pages(project: Project) -> Iterator[list[tuple[str, str, str]]]:
    """``(prompt, context, response to export)`` of the accepted set, a page of ``CHUNK_ROWS`` at a time
    (the first of ``FIRST_PAGE_ROWS``)."""
    items = accepted_items(project).values_list("id", "prompt", "context", "response")
    last, size = 0, FIRST_PAGE_ROWS
    # The bound on both sides of the join lets PostgreSQL start both index scans at the page.
    while page := list(items.filter(id__gt=last, gate_decision__item_id__gt=last)[:size]):
        size = CHUNK_ROWS
        last = page[-1][0]
        # By id range, not a list of 2,000 ids (costly to build and parse); reviews of
        # other items in the range are never looked up.
        corrections = dict(
            Review.objects.filter(item_id__gte=page[0][0], item_id__lte=last)
            .exclude(corrected_response="")
            .order_by("item_id", "updated_at", "id")  # the latest correction of an item comes last and wins
            .values_list("item_id", "corrected_response")
        )
        yield [(prompt, context, corrections.get(pk) or response) for pk, prompt, context, response in page]


def iter_chat_jsonl(project: Project) -> Iterator[bytes]:
    """UTF-8 JSONL lines of the accepted set, one ``bytes`` per item (newline included), in item order.

    Where an SME wrote a corrected response, the latest correction (by
    ``updated_at``, then id) is the assistant turn instead of the original
    response. Read in pages of ``CHUNK_ROWS`` items by id (keyset), each page
    one query for the items and one for their corrections: the first line
    comes after one small page whatever the size of the set, memory holds
    two pages, and no transaction stays open while a client downloads.
    Outside a transaction the next page is read by a thread on its own
    connection while this one is written (``read_ahead``); inside one (whose
    rows another connection would not see) pages are read in turn. Each page
    sees the database as it is when it is read.
    """
    pages = _pages(project)
    if not connection.in_atomic_block:
        pages = read_ahead(pages)
    dumps = orjson.dumps
    for page in pages:
        for prompt, context, response in page:
            user, assistant = chat_record(prompt=prompt, context=context, response=response)["messages"]
            user, assistant = user["content"], assistant["content"]
            line = b"".join((_USER, dumps(user), _ASSISTANT, dumps(assistant), _END))
            # An ASCII str is known as such in constant time: most lines skip even the escape's scan of the bytes.
            yield line if user.isascii() and assistant.isascii() else escape_unicode_line_breaks(line)


def in_blocks(lines: Iterable[bytes], size: int = BLOCK_BYTES) -> Iterator[bytes]:
    """The same bytes as ``lines``, regrouped into blocks of whole lines of about ``size`` bytes.

    A streamed HTTP response writes each chunk with its own system call, so
    one chunk per line would cost a call per item.
    """
    block: list[bytes] = []
    held = 0
    for line in lines:
        block.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(block)
            block, held = [], 0
    if block:
        yield b"".join(block)
