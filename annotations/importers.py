"""Import items (and prior human labels) from JSONL or CSV.

Each JSONL line or CSV row is one item with the fields of the design:
``prompt`` and ``response`` (required, non-empty; a project that ``accepts_prompt_only`` takes rows
without a response, which wait as "needs a response"), ``context``, ``reference``,
``source_model``, ``task_type`` (strings), ``metadata`` (an object; in CSV a
JSON string), and ``external_id`` (or ``id``). Other fields are kept in
``metadata``. A label field (``human_label`` by default, ``accept``/``reject``)
imports as an SME review with no reviewer.

A malformed line or row is reported with its line number and reason and
nothing of it is stored; the rest of the file imports. Rows whose
``external_id`` already exists in the project are skipped, so re-importing a
file changes nothing. An item with no id gets the first 24 hex digits of the
sha256 of its prompt, context and response.

Sizes: one field (a text field, or ``metadata`` as JSON) may be at most
``settings.LARRY_IMPORT_MAX_FIELD_BYTES`` bytes of UTF-8 (default 1 MiB);
a larger one makes its row an error. One line (JSONL) or one CSV cell may be
at most ``ROW_FIELDS`` times that: a longer JSONL line is reported and
skipped in small blocks without being held in memory; a longer CSV line or
cell stops a CSV import with a clear fatal error (CSV rows cannot be found
again reliably after it), keeping what was stored before.

Nesting: arrays and objects may nest at most ``MAX_NESTING`` (64) levels in
a JSONL line (its own object is level 1) or a CSV metadata cell; a deeper
one makes its row an error ("nested deeper than 64 levels ..."), found
before anything walks it without a bound, so every later reader of the
metadata (the NUL check, serialisation, Django, DRF, the admin) is safe.

Speed (bench/data_io.py, docs/PERFORMANCE.md): lines are parsed with orjson
by a thread ahead of the storing. On PostgreSQL each batch's new items and
labels are ``COPY``ed straight into their tables (``ON CONFLICT DO NOTHING``
through a temporary table should an id be stored by other means meanwhile),
by two connections at once outside a transaction; imports into one project
take turns (an advisory lock), so they never deadlock on each other's ids.
On SQLite each batch is one IMMEDIATE transaction of prepared rows inserted
by ``executemany`` (``_store_sqlite``: no model objects). All paths count
created and existing items the same way.
"""

import contextlib
import csv
import difflib
import functools
import hashlib
import json
import queue
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

import orjson
from django.conf import settings
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from annotations.models import Decision, Item, Project, Review
from larry_web.planner import analyze_after_bulk_write

T = TypeVar("T")
TEXT_FIELDS = ("prompt", "context", "response", "reference", "source_model", "task_type")
REQUIRED_FIELDS = ("prompt", "response")
PROMPT_ONLY_REQUIRED = ("prompt",)  # a project that accepts prompts without a response
ID_FIELDS = ("external_id", "id")
BATCH_SIZE = 2000
# Connections storing batches at once on PostgreSQL (outside a transaction).
WRITERS = 2
# Key of the PostgreSQL advisory lock that makes imports into one project take turns (with the project id).
IMPORT_LOCK = 0x1A770003
FORMATS = ("jsonl", "csv")
# A line (or CSV cell) may hold several fields at the limit; past this many times it, it is not read.
ROW_FIELDS = 8
# How deep arrays and objects may nest in a JSONL line or a CSV metadata cell (a line's own object is level 1).
# Real metadata seldom nests ten levels; 64 stays far below every limit met by what walks it afterwards:
# orjson writes 254 levels and reads 1,024, and Python's 1,000 frames are shared by the standard library's
# json, our own checks, Django decoding a JSONField and DRF rendering it, which start some 100 frames deep.
MAX_NESTING = 64
TOO_DEEP = f"nested deeper than {MAX_NESTING} levels of arrays and objects"
BOM = b"\xef\xbb\xbf"
_SKIP_BLOCK = 1 << 16


class ImportFormatError(ValueError):
    """The file as a whole cannot be read (unknown format, not UTF-8, no header)."""


@dataclass
class RowError:
    """One line (JSONL) or row (CSV, numbered by its first line) that was not stored."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import stored: counts, and every line that was not stored with its reason.

    ``blank`` counts the blank lines (JSONL) or rows (CSV: a blank line, or a
    row whose every cell is empty or white space, as spreadsheets write them)
    that were skipped; they are neither rows nor errors.
    """

    created: int = 0
    existing: int = 0
    labels: int = 0
    errors: list[RowError] = field(default_factory=list)
    fatal: str = ""
    blank: int = 0

    @property
    def rows(self) -> int:
        return self.created + self.existing + len(self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "existing": self.existing,
            "labels": self.labels,
            "blank": self.blank,
            "errors": [{"line": e.line, "reason": e.reason} for e in self.errors],
            "fatal": self.fatal,
        }


def detect_format(filename: str) -> str:
    """``"jsonl"`` or ``"csv"`` from a file name; raises ImportFormatError otherwise."""
    name = filename.lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise ImportFormatError(f"{filename}: unknown format (expected .jsonl or .csv)")


def sniff_format(filename: str, head: bytes) -> str:
    """The format from the file name, else from the first bytes: a ``{`` first means JSONL, else CSV.

    ``head`` is the start of the file (a few KiB). Raises ImportFormatError for an empty file.
    """
    try:
        return detect_format(filename)
    except ImportFormatError:
        pass
    text = head.removeprefix(BOM).lstrip()
    if not text:
        raise ImportFormatError(f"{filename}: the file is empty") from None
    return "jsonl" if text.startswith(b"{") else "csv"


def max_field_bytes() -> int:
    """The largest field accepted, in bytes of UTF-8 (``LARRY_IMPORT_MAX_FIELD_BYTES``)."""
    return settings.LARRY_IMPORT_MAX_FIELD_BYTES


def _lines(stream: IO[bytes], cap: int) -> Iterator[tuple[bytes | None, int]]:
    """``(line, size)`` per physical line; a line over ``cap`` bytes (newline excluded) is skipped
    in blocks of 64 KiB and yields ``(None, its size)``, so it is never held in memory."""
    while True:
        raw = stream.readline(cap + 1)
        if not raw:
            return
        if len(raw) <= cap or raw.endswith(b"\n"):
            yield raw, len(raw)
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = stream.readline(_SKIP_BLOCK)
            if not raw:
                break
            size += len(raw)
        yield None, size


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: bytes | str) -> tuple[Any, str]:
    """``(value, "")`` for one JSON text (a JSONL line or a CSV metadata cell), else ``(None, reason)``.

    Refused: invalid JSON (with the standard library's reason and column),
    NaN and Infinity, lone surrogates, text that is not UTF-8, and arrays and
    objects nested deeper than ``MAX_NESTING`` levels. The depth is settled
    before anything walks the value recursively without a bound: orjson
    (which stops by itself at 1,024 levels) parses first; the float check,
    which visits every value of every line anyway, counts the levels as it
    goes and stops past ``MAX_NESTING`` (so a line pays nothing more for the
    limit); the standard library, for what orjson refuses, is bounded by
    Python's recursion limit, and its RecursionError is this same refusal.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _parse_slowly(text)
    try:
        has_float, keys = _scan(value)
    except _TooDeep:
        return None, TOO_DEEP
    # A key written twice keeps only its last value in any parser: which "human_label" did the file mean?
    # Fewer keys parsed than '"...":' in the text may be a repeated key (or a string holding '":'):
    # the standard library then says which, exactly.
    if len((_KEY_TOKEN if type(text) is bytes else _KEY_TOKEN_STR).findall(text)) > keys:
        repeated = _repeated_key(text)
        if repeated:
            return None, repeated
    if not has_float:
        return value, ""
    # orjson reads integers over 64 bits as floats, losing digits; the standard library does not.
    return json.loads(text), ""


_KEY_TOKEN = re.compile(rb'"\s*:')
_KEY_TOKEN_STR = re.compile(r'"\s*:')


class _RepeatedKey(ValueError):
    pass


def _refuse_repeats(pairs: list[tuple[str, Any]]) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise _RepeatedKey(key)
        seen.add(key)
    return dict(pairs)


def _repeated_key(text: bytes | str) -> str:
    """The reason a JSON text that parsed is refused for a key repeated in one object, or ""."""
    try:
        json.loads(text, object_pairs_hook=_refuse_repeats)
    except _RepeatedKey as exc:
        key = exc.args[0]
        shown = key if len(key) <= 80 else key[:80] + "..."
        return f"the key {shown!r} appears twice in one object: which value is meant cannot be told"
    except (ValueError, RecursionError):
        return ""
    return ""


def _may_be_too_deep(text: bytes | str) -> bool:
    if type(text) is bytes:
        return text.count(b"[") + text.count(b"{") > MAX_NESTING
    return text.count("[") + text.count("{") > MAX_NESTING


def _too_deep(value: Any) -> bool:
    """Whether arrays and objects nest deeper than ``MAX_NESTING`` levels in a parsed JSON value (an array or
    object counts as level 1). A loop over one level at a time, so any depth is safe to measure."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_NESTING:
            return True
        inner = []
        for container in level:
            for v in container.values() if type(container) is dict else container:
                if type(v) is dict or type(v) is list:
                    inner.append(v)
        level = inner
    return False


def _parse_slowly(raw: bytes | str) -> tuple[Any, str]:
    """What orjson refused, parsed by the standard library for a precise reason (or for
    what the standard library accepts and orjson does not)."""
    if type(raw) is bytes:
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            return None, f"not UTF-8 (byte {exc.start + 1} of the line)"
    else:
        text = raw
    try:
        record = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_repeats)
    except RecursionError:  # nested deeper than Python's recursion limit allows, which is deeper than ours
        return None, TOO_DEEP
    except _RepeatedKey as exc:
        key = exc.args[0]
        return None, f"the key {key[:80]!r} appears twice in one object: which value is meant cannot be told"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    if _may_be_too_deep(text) and _too_deep(record):
        return None, TOO_DEEP
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None, "invalid JSON: a \\u escape makes a lone surrogate, which is not text"
    return record, ""


class _TooDeep(Exception):
    """Arrays and objects nest deeper than ``MAX_NESTING`` levels."""


def _scan(value: Any, depth: int = 1) -> tuple[bool, int]:
    """``(whether a float is anywhere in a parsed JSON value, how many object keys it has)`` (plain loops:
    this runs on every line).

    ``depth`` is the level of ``value`` (an array or object at the top is
    level 1). Every value is visited, and an array or object deeper than
    ``MAX_NESTING`` raises _TooDeep rather than recursing further.
    """
    if depth > MAX_NESTING:
        raise _TooDeep
    kind = type(value)
    if kind is float:
        return True, 0
    if kind is dict:
        keys = len(value)
        value = value.values()
    elif kind is list:
        keys = 0
    else:
        return False, 0  # a string, an integer, true, false or null
    found = False
    for v in value:
        kind = type(v)
        if kind is float:
            found = True
        elif kind is dict or kind is list:
            inner_float, inner_keys = _scan(v, depth + 1)
            found = found or inner_float
            keys += inner_keys
    return found, keys


def _jsonl_records(stream: IO[bytes], limit: int) -> Iterator[tuple[int, dict | None, str]]:
    cap = limit * ROW_FIELDS
    _refuse_utf16(stream)
    for line_no, (raw, size) in enumerate(_lines(stream, cap), start=1):
        if raw is None:
            yield line_no, None, f"the line is {size:,} bytes, over the limit of {cap:,} for one line; not read"
            continue
        if line_no == 1 and raw.startswith(BOM):
            raw = raw[3:]
        if not raw.strip():
            yield line_no, None, ""
            continue
        record, problem = _parse_json(raw)
        if problem:
            yield line_no, None, problem
            continue
        if not isinstance(record, dict):
            yield line_no, None, f"expected a JSON object, got {type(record).__name__}"
            continue
        yield line_no, record, ""


def _csv_records(
    stream: IO[bytes], limit: int, required: tuple[str, ...] = REQUIRED_FIELDS
) -> Iterator[tuple[int, dict | None, str]]:
    cap = limit * ROW_FIELDS
    _refuse_utf16(stream)
    physical = 0

    def lines() -> Iterator[str]:
        # Decoded line by line, so a fault is reported with its exact line.
        nonlocal physical
        for raw, size in _lines(stream, cap):
            physical += 1
            if raw is None:
                raise ImportFormatError(
                    f"line {physical} is {size:,} bytes, over the limit of {cap:,} for one line; stopped there"
                )
            if physical == 1 and raw.startswith(BOM):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ImportFormatError(
                    f"line {physical} is not UTF-8 (byte {exc.start + 1} of the line); stopped there"
                ) from None

    # A cell may be as long as a line; the csv module's default limit (131,072 characters) is lower.
    csv.field_size_limit(cap)
    # strict: a stray quote is an error, never a cell that swallows the rows after it.
    reader = csv.reader(lines(), strict=True)
    try:
        header = next(reader, None)
        if not header:
            raise ImportFormatError("the CSV file has no header row")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ImportFormatError(f"the CSV header repeats the column {', '.join(map(repr, repeated))}")
        missing = [name for name in required if name not in header]
        if missing:
            raise ImportFormatError(f"the CSV header has no {' or '.join(missing)} column{_guesses(missing, header)}")
        done = reader.line_num
        for row in reader:
            start, done = done + 1, reader.line_num
            if not any(cell.strip() for cell in row):  # a blank line, or a row of empty cells
                yield start, None, ""
                continue
            if len(row) != len(header):
                how = "fewer cells than the" if len(row) < len(header) else f"{len(row)} cells for"
                yield start, None, f"{how} {len(header)} columns"
                continue
            record = dict(zip(header, row, strict=True))
            if record.get("metadata"):
                value, problem = _parse_json(record["metadata"])
                if problem:
                    if problem != TOO_DEEP:
                        problem = "not valid JSON: " + problem.removeprefix("invalid JSON: ")
                    yield start, None, f"metadata is {problem}"
                    continue
                record["metadata"] = value
            yield start, record, ""
    except csv.Error as exc:
        raise ImportFormatError(f"CSV error at line {reader.line_num}: {exc}; stopped there") from None


def iter_records(
    stream: IO[bytes], fmt: str, *, limit: int | None = None, required: tuple[str, ...] = REQUIRED_FIELDS
) -> Iterator[tuple[int, dict | None, str]]:
    """``(line, record, problem)`` per JSONL line or CSV row; ``record`` is None when ``problem`` says why,
    and ``(line, None, "")`` for a blank line (JSONL) or row (CSV: also a row of empty cells).

    ``limit`` is the largest field in bytes (default ``max_field_bytes()``);
    ``required`` the columns a CSV header must have.
    Raises ImportFormatError for an unknown format or, for CSV, a file that
    cannot be read further (not UTF-8, broken quoting, a line or cell over
    ``ROW_FIELDS * limit``).
    """
    limit = limit or max_field_bytes()
    if fmt == "jsonl":
        return _jsonl_records(stream, limit)
    if fmt == "csv":
        return _csv_records(stream, limit, required)
    raise ImportFormatError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _refuse_utf16(stream: IO[bytes]) -> None:
    """Raise ImportFormatError for a file in UTF-16 or UTF-32 (a byte-order mark of theirs, or NULs between
    the first characters, as Windows tools save "Unicode" text), rather than a "not UTF-8" on every line.
    Looks at the first bytes of a seekable stream and puts it back; a stream that cannot seek is not looked at."""
    if not getattr(stream, "seekable", lambda: False)():
        return
    start = stream.tell()
    head = stream.read(64)
    stream.seek(start)
    boms = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}
    encoding = next((name for bom, name in boms.items() if head.startswith(bom)), None)
    if encoding is None and len(head) >= 4 and head.count(b"\x00") >= len(head) // 3:
        encoding = "UTF-16 or UTF-32"
    if encoding:
        raise ImportFormatError(f"the file is {encoding}, not UTF-8: save it as UTF-8 and import it again")


def _dump_json(value: Any) -> str:
    """JSON text of a parsed value at most ``MAX_NESTING`` levels deep (orjson writes at most 254)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # e.g. an integer over 64 bits, which the standard library writes
        return json.dumps(value, ensure_ascii=False)


def _has_nul(value: Any) -> bool:
    """Whether a NUL character is in any string or key of a parsed value (recursive: at most ``MAX_NESTING``)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _check_size(name: str, text: str, limit: int) -> None:
    # UTF-8 takes at most 4 bytes a character: only long texts need encoding to be measured.
    if len(text) * 4 > limit and (size := len(text.encode("utf-8"))) > limit:
        raise ValueError(f"{name} is {size:,} bytes, over the limit of {limit:,} (LARRY_IMPORT_MAX_FIELD_BYTES)")


def _near_miss(name: str, given) -> str | None:
    """Of the ``given`` field names, the one most like the required ``name`` (compared without case or
    surrounding white space; ``difflib`` ratio at least 0.8, so 'responce' or 'Prompt' but not 'resp'), if any."""
    candidates = {n.strip().casefold(): n for n in given if type(n) is str and n not in _FIELDS}
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.8)
    return candidates[close[0]] if close else None


def _guesses(missing: list[str], given) -> str:
    """`` (did you mean 'responce'?)`` for the missing required fields that have a near miss in ``given``."""
    near = {name: guess for name in missing if (guess := _near_miss(name, given))}
    if not near:
        return ""
    if len(missing) == 1:
        return f" (did you mean {near[missing[0]]!r}?)"
    return " (did you mean " + ", ".join(f"{guess!r} for {name}" for name, guess in near.items()) + "?)"


def given_id(record: dict) -> Any:
    """The record's id as given: ``external_id``, else ``id`` (whichever is first neither missing, null nor
    blank), a string stripped of surrounding white space; None when there is none. Not checked further."""
    for name in ID_FIELDS:
        value = record.get(name)
        if type(value) is str:
            value = value.strip()
        if value is not None and value != "":
            return value
    return None


@dataclass
class _Row:
    fields: dict[str, Any]
    label: str | None
    metadata_json: str
    # SQLite: the item's values for ``_SQLITE_ITEM_VALUES`` (``_sqlite_prepared``), made by the parser's thread.
    sqlite_values: tuple | None = None


def _clean(record: dict, label_field: str, limit: int, required: tuple[str, ...] = REQUIRED_FIELDS) -> _Row:
    """Validate one record into the item's fields, its label (or None) and its metadata as JSON.

    Raises ValueError with the reason. Written for speed: it runs on every row.
    """
    fields: dict[str, Any] = {}
    get = record.get
    short = limit // 4  # UTF-8 takes at most 4 bytes a character: shorter texts need no measuring
    for name in TEXT_FIELDS:
        value = get(name)
        if value is None:
            value = ""
        elif type(value) is not str:
            raise ValueError(f"{name} must be a string, got {type(value).__name__}")
        elif "\x00" in value:
            raise ValueError(f"{name} contains a NUL character, which the database cannot store")
        elif len(value) > short:
            _check_size(name, value, limit)
        fields[name] = value
    for name in required:
        if not fields[name].strip():
            near = get(name) is None and _near_miss(name, record)
            raise ValueError(f"{name} is missing (did you mean {near!r}?)" if near else f"{name} is missing or empty")
    external_id = given_id(record)
    if external_id is None:
        digest = hashlib.sha256("\x1f".join((fields["prompt"], fields["context"], fields["response"])).encode())
        external_id = digest.hexdigest()[:24]
    elif type(external_id) is int:
        external_id = str(external_id)
    elif type(external_id) is not str:
        raise ValueError(f"external_id must be a string or integer, got {type(external_id).__name__}")
    if len(external_id) > 255:
        raise ValueError("external_id is longer than 255 characters")
    if "\x00" in external_id:
        raise ValueError("external_id contains a NUL character")
    metadata = get("metadata") or {}
    if type(metadata) is not dict:
        raise ValueError(f"metadata must be an object, got {type(metadata).__name__}")
    known = _known_fields(label_field)
    extra = {k: v for k, v in record.items() if k not in known and v is not None and v != ""}
    if extra:
        metadata = {**extra, **metadata}
    fields["metadata"] = metadata
    metadata_json = _dump_json(metadata)
    if len(metadata_json) > short:
        _check_size("metadata (with the extra fields)", metadata_json, limit)
    if "\\u0000" in metadata_json and _has_nul(metadata):
        raise ValueError("metadata contains a NUL character, which the database cannot store")
    fields["external_id"] = external_id
    label = get(label_field)
    if label is None or label == "":
        return _Row(fields, None, metadata_json)
    decision = label.strip().lower() if type(label) is str else None
    if decision not in _DECISIONS:
        raise ValueError(f"{label_field} must be accept or reject, got {str(label)[:80]!r}")
    return _Row(fields, decision, metadata_json)


@functools.cache
def _known_fields(label_field: str) -> frozenset[str]:
    return frozenset((*TEXT_FIELDS, *ID_FIELDS, "metadata", label_field))


_DECISIONS = frozenset(Decision.values)
_METADATA_ENCODER = Item._meta.get_field("metadata").encoder
_FIELDS = frozenset((*TEXT_FIELDS, *ID_FIELDS, "metadata"))
_COPY_COLUMNS = ("pos", "external_id", *TEXT_FIELDS, "metadata", "label")


def _existing_ids(cursor, project: Project, batch: list[_Row]) -> set[str]:
    """Which of the batch's external ids the project has stored (one query: an array on PostgreSQL, a JSON
    array read by ``json_each`` on SQLite, so no batch meets SQLite's limit on parameters)."""
    ids = [row.fields["external_id"] for row in batch]
    if connection.vendor == "postgresql":
        where, ids = "external_id = ANY(%s)", ids
    else:
        where, ids = "external_id IN (SELECT value FROM json_each(%s))", json.dumps(ids)
    cursor.execute(
        f"SELECT external_id FROM {Item._meta.db_table} WHERE project_id = %s AND {where}", [project.pk, ids]
    )
    return {external_id for (external_id,) in cursor.fetchall()}


def _allocate_ids(n: int) -> list[int]:
    """``n`` item ids from the table's sequence, in order (sequences ignore transactions)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [Item._meta.db_table, n]
        )
        return [pk for (pk,) in cursor.fetchall()]


def _store_copy(project: Project, batch: list[_Row], pks: list[int] | None = None) -> tuple[int, int]:
    """PostgreSQL: the batch's new items and labels, COPYed straight into their tables.

    Which ids are new is asked first; item ids are ``pks`` (one per row of
    the batch, taken earlier so that items keep the file's order when batches
    are stored in parallel) or else taken from the table's sequence now, so
    the labels can name their items. Should another import store one of the
    ids in between (a unique violation), the batch is rolled back and stored
    by ``_store_upsert``, which lets the database decide.
    Returns (items created, labels created).
    """
    items, reviews = Item._meta.db_table, Review._meta.db_table
    try:
        # wrap_database_errors: psycopg's own errors from COPY become Django's IntegrityError.
        with transaction.atomic(), connection.wrap_database_errors, connection.cursor() as cursor:
            existing = _existing_ids(cursor, project, batch)
            if pks is None:
                new = [row for row in batch if row.fields["external_id"] not in existing]
                pks = _allocate_ids(len(new)) if new else []
            else:
                kept = [
                    (pk, row) for pk, row in zip(pks, batch, strict=True) if row.fields["external_id"] not in existing
                ]
                pks, new = [pk for pk, _ in kept], [row for _, row in kept]
            if not new:
                return 0, 0
            now = timezone.now()
            columns = ", ".join(("id", "project_id", "external_id", *TEXT_FIELDS, "metadata", "priority"))
            with cursor.copy(f"COPY {items} ({columns}, created_at) FROM STDIN") as copy:
                for pk, row in zip(pks, new, strict=True):
                    f = row.fields
                    texts = (f["external_id"], *(f[n] for n in TEXT_FIELDS), row.metadata_json)
                    copy.write_row((pk, project.pk, *texts, 0, now))
            origin = Review.Origin.IMPORT.value
            labelled = [(pk, row.label) for pk, row in zip(pks, new, strict=True) if row.label]
            if labelled:
                review_columns = (
                    "item_id, decision, reason, comment, corrected_response, origin, created_at, updated_at"
                )
                with cursor.copy(f"COPY {reviews} ({review_columns}) FROM STDIN") as copy:
                    for pk, label in labelled:
                        copy.write_row((pk, label, "", "", "", origin, now, now))
            return len(new), len(labelled)
    except IntegrityError:
        return _store_upsert(project, batch)


def _store_upsert(project: Project, batch: list[_Row]) -> tuple[int, int]:
    """PostgreSQL, when ids race: COPY the batch into a temporary table, then insert the new items
    (``ON CONFLICT DO NOTHING``) and their labels in one statement. Returns (items created, labels created)."""
    items, reviews = Item._meta.db_table, Review._meta.db_table
    text_columns = ", ".join(TEXT_FIELDS)
    with transaction.atomic(), connection.cursor() as cursor:
        # Dropped below, not ON COMMIT: the import may run inside a caller's transaction.
        cursor.execute(
            "CREATE TEMPORARY TABLE larry_import_batch (pos integer, external_id text, "
            + ", ".join(f"{name} text" for name in TEXT_FIELDS)
            + ", metadata jsonb, label text)"
        )
        with cursor.copy(f"COPY larry_import_batch ({', '.join(_COPY_COLUMNS)}) FROM STDIN") as copy:
            for pos, row in enumerate(batch):
                f = row.fields
                copy.write_row(
                    (pos, f["external_id"], *(f[name] for name in TEXT_FIELDS), row.metadata_json, row.label)
                )
        cursor.execute(
            f"""
            WITH new AS (
                INSERT INTO {items} (project_id, external_id, {text_columns}, metadata, priority, created_at)
                SELECT %s, external_id, {text_columns}, metadata, 0, now()
                FROM larry_import_batch ORDER BY pos
                ON CONFLICT (project_id, external_id) DO NOTHING
                RETURNING id, external_id
            ), labels AS (
                INSERT INTO {reviews} (item_id, reviewer_id, decision, reason, comment, corrected_response, origin,
                                       seconds_spent, created_at, updated_at)
                SELECT new.id, NULL, b.label, '', '', '', %s, NULL, now(), now()
                FROM new JOIN larry_import_batch b USING (external_id)
                WHERE b.label IS NOT NULL
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM new), (SELECT count(*) FROM labels)
            """,
            [project.pk, Review.Origin.IMPORT],
        )
        created, labels = cursor.fetchone()
        cursor.execute("DROP TABLE larry_import_batch")
    return created, labels


def _store_sqlite(project: Project, batch: list[_Row]) -> tuple[int, int]:
    """SQLite: the batch's new items and labels as prepared rows, by ``executemany``, in one transaction.

    What the ORM's ``bulk_create`` wrote, without a model object per row (which
    was most of a 50,000-item import's time): every column of the tables, the
    model's defaults filled in, ``metadata`` as the JSON text Django writes
    (``adapt_json_value``: the standard library's, so ``exact`` lookups match),
    times as the backend adapts them; each row's values made ahead by the parser's
    thread (``_sqlite_prepared``) where it can. The transaction is IMMEDIATE
    (settings), so it holds the database's one write lock: which ids exist is
    known exactly, and the items, inserted in order, are numbered by SQLite one
    after the other from the table's highest id ever given (AUTOINCREMENT), so
    the labels can name their items. Should an id be stored all the same (``ON
    CONFLICT DO NOTHING`` keeps it), the items' ids are read back by their
    external ids. Returns (items created, labels created).
    """
    items, reviews = Item._meta.db_table, Review._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        existing = _existing_ids(cursor, project, batch)
        new = [row for row in batch if row.fields["external_id"] not in existing]
        if not new:
            return 0, 0
        cursor.execute(
            f"SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = %s), 0), "
            f"coalesce((SELECT max(id) FROM {items}), 0))",
            [items],
        )
        first = cursor.fetchone()[0] + 1
        # The project's id and the time are the same for every row: written into the statement (an integer
        # and the backend's own text of a datetime), so that each row's values are only its own.
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        marks = ", ".join(["%s"] * len(_SQLITE_ITEM_VALUES))
        cursor.executemany(
            f"INSERT INTO {items} ({', '.join(_SQLITE_ITEM_DEFAULTS)}, {', '.join(_SQLITE_ITEM_VALUES)}) "
            f"VALUES ({int(project.pk)}, '{now}', '', NULL, 0.0, {marks}) "
            "ON CONFLICT (project_id, external_id) DO NOTHING",
            [row.sqlite_values or _sqlite_values(row) for row in new],
        )
        if cursor.rowcount == len(new):
            pks = {row.fields["external_id"]: pk for pk, row in enumerate(new, start=first)}
        else:  # stored meanwhile after all: which of them this batch wrote, by their external ids
            cursor.execute(f"SELECT external_id, id FROM {items} WHERE id >= %s", [first])
            pks = dict(cursor.fetchall())
        labelled = [(pks[ext], row.label) for row in new if row.label and (ext := row.fields["external_id"]) in pks]
        if labelled:
            cursor.executemany(
                f"INSERT INTO {reviews} ({', '.join(_SQLITE_REVIEW_COLUMNS)}) "
                f"VALUES (%s, NULL, %s, '', '', '', '{Review.Origin.IMPORT.value}', NULL, '{now}', '{now}')",
                labelled,
            )
    return len(pks), len(labelled)


# The columns of an item whose values each row gives (``_sqlite_values``), and those the same for every row
# (the project, the time, the model's defaults); ``id`` is numbered by SQLite. A test checks none is missing.
_SQLITE_ITEM_VALUES = ("external_id", *TEXT_FIELDS, "metadata")
_SQLITE_ITEM_DEFAULTS = ("project_id", "created_at", "reasoning", "answers_id", "priority")
_SQLITE_REVIEW_COLUMNS = (
    *("item_id", "reviewer_id", "decision", "reason", "comment", "corrected_response", "origin", "seconds_spent"),
    *("created_at", "updated_at"),
)


def _sqlite_values(row: _Row) -> tuple:
    """The row's values for ``_SQLITE_ITEM_VALUES``: its texts, and its metadata as the JSON text Django writes."""
    f = row.fields
    metadata = connection.ops.adapt_json_value(f["metadata"], _METADATA_ENCODER)
    return (f["external_id"], f["prompt"], f["context"], f["response"], f["reference"], f["source_model"],
            f["task_type"], metadata)  # fmt: skip


def _sqlite_prepared(batches: Iterator[list[_Row]]) -> Iterator[list[_Row]]:
    """The same batches, each row's ``sqlite_values`` made (for ``read_ahead``: on the parser's thread)."""
    for batch in batches:
        for row in batch:
            row.sqlite_values = _sqlite_values(row)
        yield batch


def _store(project: Project, batch: list[_Row], report: ImportReport) -> None:
    store = _store_copy if connection.vendor == "postgresql" else _store_sqlite
    _count(report, batch, *store(project, batch))


def _count(report: ImportReport, batch: list[_Row], created: int, labels: int) -> None:
    report.created += created
    report.existing += len(batch) - created
    report.labels += labels


def _store_in_parallel(project: Project, batches: Iterator[list[_Row]], report: ImportReport, progress) -> None:
    """PostgreSQL, outside a transaction: store the batches with ``WRITERS`` threads, each on its own
    connection, so the database works on several batches at once (it, not Python, is the limit).

    Ids are taken here in file order before a batch is handed out, so items
    keep the file's order whichever batch commits first. Counts and
    ``progress`` are updated under a lock, in order of completion. The first
    error stops the hand-out and is raised once the writers have stopped.
    """
    todo: queue.Queue = queue.Queue(maxsize=WRITERS)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            while (job := todo.get()) is not None:
                if failures:
                    continue  # keep taking jobs, so the hand-out never blocks
                try:
                    created, labels = _store_copy(project, *job)
                    with lock:
                        _count(report, job[0], created, labels)
                        if progress:
                            progress(report.rows)
                except BaseException as exc:
                    failures.append(exc)
        finally:
            connections.close_all()  # this thread's own connection

    writers = [threading.Thread(target=write, name="larry-import-writer", daemon=True) for _ in range(WRITERS)]
    for writer in writers:
        writer.start()
    try:
        for batch in batches:
            if failures:
                break
            todo.put((batch, _allocate_ids(len(batch))))
    finally:
        for _ in writers:
            todo.put(None)
        for writer in writers:
            writer.join()
    if failures:
        raise failures[0]


def _batches(
    records, label_field: str, limit: int, report: ImportReport, required: tuple[str, ...] = REQUIRED_FIELDS
) -> Iterator[list[_Row]]:
    """Valid rows in batches of ``BATCH_SIZE``; bad rows and in-file duplicates go to ``report.errors``, blank
    ones to ``report.blank``, and a fatal fault to ``report.fatal`` (after the last full batch)."""
    seen: dict[str, int] = {}
    batch: list[_Row] = []
    try:
        for line_no, record, problem in records:
            if record is None:
                if problem:
                    report.errors.append(RowError(line_no, problem))
                else:
                    report.blank += 1
                continue
            try:
                row = _clean(record, label_field, limit, required)
            except ValueError as exc:
                report.errors.append(RowError(line_no, str(exc)))
                continue
            external_id = row.fields["external_id"]
            first = seen.setdefault(external_id, line_no)
            if first != line_no:
                shown = external_id if len(external_id) <= 80 else external_id[:80] + "..."
                report.errors.append(RowError(line_no, f"duplicate external_id {shown!r} (first on line {first})"))
                continue
            batch.append(row)
            if len(batch) >= BATCH_SIZE:
                yield batch
                batch = []
    except ImportFormatError as exc:
        report.fatal = str(exc)
    if batch:
        yield batch


def read_ahead(chunks: Iterator[T]) -> Iterator[T]:
    """The same chunks, produced one ahead by a thread while the caller works on the previous one.

    Used where one side is Python work and the other waits on PostgreSQL
    (import: parse while storing; export: read the next page while writing).
    At most two chunks are in memory. The thread's exceptions are raised
    here; closing the iterator early stops the thread. A thread has its own
    database connection (Django's are per thread), closed when it ends; so a
    producer that queries must not be used inside a transaction whose rows it
    must see.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        handoff.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(end)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            handoff.put(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=produce, name="larry-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


# What queries join, filter and sort items on (not the long texts): analysed right after a big import.
ITEM_KEY_COLUMNS = (
    "id",
    "project_id",
    "external_id",
    "priority",
    "task_type",
    "source_model",
    "created_at",
    "answers_id",
)


def import_items(
    *,
    project: Project,
    stream: IO[bytes],
    fmt: str,
    label_field: str = "human_label",
    import_labels: bool = True,
    progress=None,
) -> ImportReport:
    """Import a JSONL or CSV byte stream into ``project``; never raises for bad rows.

    ``fmt`` is ``"jsonl"`` or ``"csv"``. With ``import_labels`` false the label
    field is ignored (kept in metadata). ``progress(rows_read)`` is called
    after every batch of ``BATCH_SIZE`` rows and at the end. Returns an
    ImportReport; a file that cannot be read further (unknown format; for CSV
    not UTF-8, broken quoting, an over-long line) sets ``report.fatal`` after
    storing the rows read before the fault. Memory stays flat: two batches,
    and the external ids seen (to report duplicates inside the file).
    Database errors are raised (the batch being stored is rolled back).
    """
    limit = max_field_bytes()
    report = ImportReport()
    required = PROMPT_ONLY_REQUIRED if project.accepts_prompt_only else REQUIRED_FIELDS
    records = iter_records(stream, fmt, limit=limit, required=required)
    effective_label_field = label_field if import_labels else "\x00no-label"
    batches = _batches(records, effective_label_field, limit, report, required)
    if connection.vendor == "sqlite":
        batches = _sqlite_prepared(batches)
    batches = read_ahead(batches)
    with _one_import_at_a_time(project):
        if connection.vendor == "postgresql" and not connection.in_atomic_block:
            _store_in_parallel(project, batches, report, progress)
        else:  # inside a transaction (whose rows other connections would not see), or not PostgreSQL
            for batch in batches:
                _store(project, batch, report)
                if progress:
                    progress(report.rows)
    if progress and not report.rows:
        progress(0)
    # Fresh statistics, so the first export and project queries after a big import are planned for its rows.
    analyze_after_bulk_write(
        {Item._meta.db_table: report.created, Review._meta.db_table: report.labels},
        columns={Item._meta.db_table: ITEM_KEY_COLUMNS},
    )
    return report


@contextlib.contextmanager
def _one_import_at_a_time(project: Project) -> Iterator[None]:
    """PostgreSQL: wait until no other import into ``project`` runs, and keep the others waiting until this
    one ends (an advisory lock on this connection; its writer threads store for it).

    Two imports of the same ids in other orders would otherwise lock each
    other's index entries and one would fail with a deadlock. Inside a
    transaction the lock is the transaction's (released at its end). A
    process that dies releases it with its connection.
    """
    if connection.vendor != "postgresql":
        yield
        return
    key = [IMPORT_LOCK, project.pk]
    in_transaction = connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT pg_advisory{'_xact' if in_transaction else ''}_lock(%s, %s)", key)
    try:
        yield
    finally:
        if not in_transaction:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)
