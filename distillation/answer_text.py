"""A teacher's answer as text: its reasoning told apart from its response, or why the reply holds neither.

``answer_parts(content, apart)`` reads one reply's ``message.content`` and
the reasoning the server sent in its own field (``message.reasoning`` or
``message.reasoning_content``; ``""`` when none). The rules, each chosen so
that no stored response or reasoning can be read two ways:

1. Both texts are cleaned first (NUL and lone surrogates become U+FFFD, as
   PostgreSQL needs, ``judging.replies.storable``), and emptiness is judged
   after cleaning: a text of white space and U+FFFD only is empty. An empty
   response is class ``empty``.
2. Reasoning that came apart: the content is the response, whole. A mention
   of ``</think>`` inside the answer (a question about reasoning tags) is
   the answer's, never a split point. Content that *starts* with a think tag
   as well is a reply with reasoning in two places: class ``invalid_reply``.
3. No reasoning apart (a server without a reasoning parser): the leading
   ``<think>…</think>`` blocks, one or more in a row, are the reasoning
   (joined by a blank line); the first may lack its opening tag (DeepSeek-R1's
   chat template opens it in the prompt). A block never closed is all
   reasoning and no answer (``empty``). Any think tag left after the blocks,
   in the response (a nested block, a stray closing tag), makes the reply
   ``invalid_reply``: it is refused, never stored with a tag in it.
4. The reasoning may hold no think tag either: the reasoning format writes it
   as ``<think>\\n<reasoning>\\n</think>\\n\\n<response>`` and a reader splits
   at the first ``</think>`` (as DeepSeek-R1's chat template does), so a tag
   inside would move the split. Such a reply is refused (``invalid_reply``),
   not escaped: an escape would change the text the teacher wrote.
5. Reasoning is kept whole up to ``REASONING_MAX`` characters, far more than
   ``TeacherSettings.max_tokens`` (at most 65,536 tokens) allows; longer
   reasoning comes from a server that ignored ``max_tokens`` and is refused
   (``invalid_reply``). Reasoning is never cut, so a reasoning row never
   carries a cut one.

A refused reply keeps neither text: ``response`` and ``reasoning`` are both
``""`` and ``error_class``/``error`` say why (the run counts and shows it).
"""

from dataclasses import dataclass

from judging import replies

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# 16 characters a token (a token of English is about 4) times the most max_tokens allows (65,536): 1 Mi characters
# (4 MiB of UTF-8 at most), which a PostgreSQL text column holds with ease (its limit is 1 GB).
REASONING_MAX = 16 * 65_536

EMPTY, INVALID_REPLY = "empty", "invalid_reply"  # TeacherAnswer.ErrorClass values


@dataclass(frozen=True)
class AnswerParts:
    """``response`` and ``reasoning`` (cleaned, stripped; ``""`` for none), or ``error_class`` (``empty`` or
    ``invalid_reply``) and ``error`` with both texts ``""``."""

    response: str = ""
    reasoning: str = ""
    error_class: str = ""
    error: str = ""


def clean(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD (``judging.replies.storable``), never cut."""
    return replies.storable(text, len(text) + 1)


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing but white space and U+FFFD (what a NUL or a lone surrogate becomes)."""
    return not text.replace("\ufffd", "").strip()


def has_think_tag(text: str) -> bool:
    """Whether ``text`` holds ``<think>`` or ``</think>``."""
    return THINK_OPEN in text or THINK_CLOSE in text


def _refused(error_class: str, error: str) -> AnswerParts:
    return AnswerParts(error_class=error_class, error=error)


def _leading_blocks(content: str) -> tuple[list[str], str] | None:
    """``(blocks, rest)``: the leading reasoning blocks split off ``content`` (rule 3), or None for a block
    never closed."""
    text, blocks = content.strip(), []
    # The first block may lack its opening tag (the chat template opened it), when no opening tag precedes the
    # first closing one.
    end = text.find(THINK_CLOSE)
    if not text.startswith(THINK_OPEN) and end >= 0 and THINK_OPEN not in text[:end]:
        blocks.append(text[:end])
        text = text[end + len(THINK_CLOSE) :].strip()
    while text.startswith(THINK_OPEN):
        end = text.find(THINK_CLOSE)
        if end < 0:
            return None
        blocks.append(text[len(THINK_OPEN) : end])
        text = text[end + len(THINK_CLOSE) :].strip()
    return blocks, text


def answer_parts(content: str, apart: str = "") -> AnswerParts:
    """Read one answer's ``content`` and the reasoning sent ``apart`` from it by the module docstring's rules.

    Never raises: a reply that gives no storable response comes back with ``error_class`` and ``error``.
    """
    content, apart = clean(content), clean(apart)
    if not is_blank(apart):
        reasoning, response = apart.strip(), content.strip()
        if response.startswith((THINK_OPEN, THINK_CLOSE)):
            return _refused(
                INVALID_REPLY,
                "the reply has its reasoning apart (reasoning_content) and a think block in the answer as well",
            )
    else:
        split = _leading_blocks(content)
        if split is None:
            return _refused(EMPTY, "the teacher's answer is empty (its <think> block is never closed)")
        blocks, response = split
        reasoning = "\n\n".join(b.strip() for b in blocks if not is_blank(b))
        if has_think_tag(response):
            return _refused(
                INVALID_REPLY,
                "a think tag (<think> or </think>) is left in the answer after its reasoning: a nested or stray "
                "reasoning block",
            )
    if has_think_tag(reasoning):
        return _refused(
            INVALID_REPLY,
            "the teacher's reasoning holds a think tag (<think> or </think>): a reasoning row could not be split "
            "from the answer",
        )
    if len(reasoning) > REASONING_MAX:
        return _refused(
            INVALID_REPLY,
            f"the teacher's reasoning is {len(reasoning):,} characters long, more than max_tokens allows "
            f"({REASONING_MAX:,}): its server ignored it",
        )
    if is_blank(response):
        return _refused(EMPTY, "the teacher's answer is empty (after its reasoning)")
    return AnswerParts(response=response, reasoning=reasoning)
