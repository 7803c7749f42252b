"""Training-set formats: how one selected item is written as one row, a small registry keyed by format.

Each entry of ``FORMATS`` (keyed by ``TrainingSet.Format``) writes a row's
text (no line terminator) and says what a file of it starts with, what ends
each row, and what of a row is its content (hashed to order rows and find
duplicates). One row per item:

- ``chat``: OpenAI chat fine-tuning JSONL,
  ``{"messages": [{"role": "system"}?, {"role": "user"}, {"role": "assistant"}]}``
  (OpenAI's fine-tuning guide, "chat" data format).
- ``alpaca``: ``{"instruction": prompt, "input": context, "output": response}``
  (the Stanford Alpaca data format; ``"system"`` added when a system prompt is set).
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": ...}]}``
  (the ShareGPT format as read by axolotl and LLaMA-Factory).
- ``dpo``: preference pairs in TRL's conversational format,
  ``{"prompt": [system?, user], "chosen": [assistant], "rejected": [assistant]}``
  (TRL's dataset formats, "preference"); the rejected side is always a
  student's response; how pairs are formed is in ``distillation.training_sets``.
- ``reasoning``: reasoning distillation, for items that carry reasoning (a
  teacher's): ``{"messages": [system?, user, {"role": "assistant", "content":
  "<think>\\n<reasoning>\\n</think>\\n\\n<response>"}], "reasoning", "response"}``,
  the assistant turn as DeepSeek-R1's distilled models are trained on it,
  and both parts again as fields of their own for trainers that keep them
  apart. The reasoning is always the one that led to the response: an item
  whose response an SME corrected is left out of this format (the report
  says why; its correction is in the other formats), and so is one whose
  reasoning holds a think tag, which would move the split at the first
  ``</think>`` (a teacher's reply with one is refused already,
  ``distillation.answer_text``). Reasoning is stored whole, never cut.
- ``judge``: judge-distillation rows for training a small judge,
  ``{"prompt", "context", "response", "verdict", "rationale", "basis"}`` for
  every accepted item and every rejected student item (a teacher's answer
  the gate did not accept is in no format); ``rationale`` is the judge's, the SME's
  comment or reason, or the vetoing rules' reasons, and ``basis`` says which.
- ``csv``: ``external_id,prompt,context,response,source_model,task_type`` with
  a header row (RFC 4180, CRLF), cells that a spreadsheet would run as a
  formula neutralised (OWASP "CSV injection"); a row holding a character
  where ``str.splitlines()`` breaks a line is quoted whole.

Every JSON row is ``distillation.jsonl.json_line``: ``json.dumps(..., ensure_ascii=False)``
with U+0080-U+009F, U+2028 and U+2029 escaped, so that readers splitting on
Unicode line boundaries see one record per line. Rows of snapshots built
before that (they are frozen text) keep their bytes.

The user turn of chat, ShareGPT and DPO rows is ``"Context:\\n<context>\\n\\n<prompt>"``
when the item has a context, as in ``distillation.export``.
"""

import csv
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

from annotations.spreadsheets import neutralise_formula
from distillation.answer_text import THINK_CLOSE, THINK_OPEN
from distillation.export import chat_record
from distillation.jsonl import json_line
from distillation.models import TrainingSet

CSV_COLUMNS = ("external_id", "prompt", "context", "response", "source_model", "task_type")

# Where str.splitlines() breaks a line, besides CR and LF (which the csv module quotes already).
_OTHER_LINE_BREAKS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass
class Candidate:
    """One selected item, with what the formats need."""

    item_id: int
    external_id: str
    prompt: str
    context: str
    response: str
    corrected: str | None
    source_model: str
    task_type: str
    outcome: str
    basis: str
    vetoed: bool
    reasons: list
    rationale: str = ""
    reasoning: str = ""
    answered_response: str | None = None  # a teacher's answer: the response of the item it answers

    @property
    def best_response(self) -> str:
        return self.corrected or self.response

    @property
    def is_teacher_answer(self) -> bool:
        """Whether the item is a teacher's answer (it ``answers`` another item), not a student's response."""
        return self.answered_response is not None


def _csv_line(cells) -> str:
    # The csv module quotes a cell holding a character of the line terminator: with "\r\n", a cell with a
    # line break is quoted (so it stays one cell, and no formula can start a line of its own). A row with
    # another character str.splitlines() breaks at is quoted whole, so that a reader splitting lines first
    # still reads one record (CSV has no escapes: the character itself stays, as RFC 4180 readers want).
    cells = [neutralise_formula(str(cell)) for cell in cells]
    quote_all = any(_OTHER_LINE_BREAKS.search(cell) for cell in cells)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerow(cells)
    return buffer.getvalue().removesuffix("\r\n")


def _user_text(prompt: str, context: str) -> str:
    return chat_record(prompt=prompt, context=context, response="")["messages"][0]["content"]


def _with_system(system_prompt: str, messages: list[dict]) -> list[dict]:
    return [{"role": "system", "content": system_prompt}, *messages] if system_prompt else messages


def _csv_cells(candidate: Candidate) -> list[str]:
    """The cells of a CSV row, in CSV_COLUMNS order."""
    return [
        candidate.external_id,
        candidate.prompt,
        candidate.context,
        candidate.best_response,
        candidate.source_model,
        candidate.task_type,
    ]


def _chat(candidate: Candidate, system_prompt: str, rejected: str) -> str:
    record = chat_record(prompt=candidate.prompt, context=candidate.context, response=candidate.best_response)
    return json_line({"messages": _with_system(system_prompt, record["messages"])})


def _alpaca(candidate: Candidate, system_prompt: str, rejected: str) -> str:
    row = {"instruction": candidate.prompt, "input": candidate.context, "output": candidate.best_response}
    return json_line({"system": system_prompt, **row} if system_prompt else row)


def _sharegpt(candidate: Candidate, system_prompt: str, rejected: str) -> str:
    user = _user_text(candidate.prompt, candidate.context)
    turns = [{"from": "human", "value": user}, {"from": "gpt", "value": candidate.best_response}]
    if system_prompt:
        turns.insert(0, {"from": "system", "value": system_prompt})
    return json_line({"conversations": turns})


def _dpo(candidate: Candidate, system_prompt: str, rejected: str) -> str:
    user = _user_text(candidate.prompt, candidate.context)
    return json_line(
        {
            "prompt": _with_system(system_prompt, [{"role": "user", "content": user}]),
            "chosen": [{"role": "assistant", "content": candidate.best_response}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
    )


def _reasoning(candidate: Candidate, system_prompt: str, rejected: str) -> str:
    user = _user_text(candidate.prompt, candidate.context)
    assistant = f"<think>\n{candidate.reasoning}\n</think>\n\n{candidate.best_response}"
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return json_line(
        {
            "messages": _with_system(system_prompt, messages),
            "reasoning": candidate.reasoning,
            "response": candidate.best_response,
        }
    )


def _reasoning_refusal(candidate: Candidate) -> str:
    if candidate.best_response != candidate.response:
        return "an SME corrected the response: the reasoning did not lead to the correction"
    if THINK_OPEN in candidate.reasoning or THINK_CLOSE in candidate.reasoning:
        return "the reasoning holds a think tag (<think> or </think>): the row's <think> block could not be split"
    return ""


def _judge(candidate: Candidate, system_prompt: str, rejected: str) -> str:
    return json_line(
        {
            "prompt": candidate.prompt,
            "context": candidate.context,
            "response": candidate.response,
            "verdict": candidate.outcome,
            "rationale": candidate.rationale,
            "basis": "rule" if candidate.vetoed else candidate.basis,
        }
    )


def _csv(candidate: Candidate, system_prompt: str, rejected: str) -> str:
    return _csv_line(_csv_cells(candidate))


def _writable(candidate: Candidate) -> str:
    return ""


def _row_text(candidate: Candidate, line: str) -> str:
    return line


def _csv_content(candidate: Candidate, line: str) -> str:
    # An id is not content: two items with the same cells but their ids are duplicates.
    return _csv_line(_csv_cells(candidate)[1:])


@dataclass(frozen=True)
class Format:
    """How rows of one format are written: ``write(candidate, system_prompt, rejected)`` gives a row's text
    (``rejected``: the DPO pair's rejected response), ``content(candidate, line)`` what of it is hashed,
    ``refusal(candidate)`` why a selected item cannot be written in the format (``""``: it can), ``header``
    what the file starts with, ``terminator`` what ends each row."""

    write: Callable[[Candidate, str, str], str]
    content: Callable[[Candidate, str], str] = _row_text
    refusal: Callable[[Candidate], str] = _writable
    header: bytes = b""
    terminator: str = "\n"


FORMATS: dict[str, Format] = {
    TrainingSet.Format.CHAT: Format(_chat),
    TrainingSet.Format.ALPACA: Format(_alpaca),
    TrainingSet.Format.SHAREGPT: Format(_sharegpt),
    TrainingSet.Format.DPO: Format(_dpo),
    TrainingSet.Format.REASONING: Format(_reasoning, refusal=_reasoning_refusal),
    TrainingSet.Format.JUDGE: Format(_judge),
    TrainingSet.Format.CSV: Format(
        _csv, content=_csv_content, header=(_csv_line(CSV_COLUMNS) + "\r\n").encode(), terminator="\r\n"
    ),
}


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise ValueError(f"unknown training-set format {fmt!r}")
    return FORMATS[fmt]


def write_row(fmt: str, candidate: Candidate, *, system_prompt: str = "", rejected: str = "") -> str:
    """The text of one row (no line terminator) of ``candidate`` in format ``fmt``.

    ``rejected`` is the DPO pair's rejected response. Raises ValueError for an
    unknown format.
    """
    return _format(fmt).write(candidate, system_prompt, rejected)


def refusal(fmt: str, candidate: Candidate) -> str:
    """Why ``candidate`` cannot be written in format ``fmt`` (the report lists it), ``""`` when it can. Raises
    ValueError for an unknown format."""
    return _format(fmt).refusal(candidate)


def content_sha256(fmt: str, candidate: Candidate, line: str) -> str:
    """The row's content hash: of its text; for CSV, of its cells but the ``external_id`` (an id is not content).
    Raises ValueError for an unknown format."""
    return hashlib.sha256(_format(fmt).content(candidate, line).encode()).hexdigest()


def file_header(fmt: str) -> bytes:
    """What a file of format ``fmt`` starts with: the CSV header row, else nothing. Raises ValueError for an
    unknown format."""
    return _format(fmt).header


def terminator(fmt: str) -> str:
    """What ends each row of a file of format ``fmt``: CRLF for CSV, else LF. Raises ValueError for an unknown
    format."""
    return _format(fmt).terminator
