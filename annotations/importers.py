"""Import items (and prior human labels) from JSONL or CSV.

Each JSONL line or CSV row is one item with the fields of the design:
``prompt`` and ``response`` (required, non-empty), ``context``, ``reference``,
``source_model``, ``task_type`` (strings), ``metadata`` (an object; in CSV a
JSON string), and ``external_id`` (or ``id``). Other fields are kept in
``metadata``. A label field (``human_label`` by default, ``accept``/``reject``)
imports as an SME review with no reviewer.

A malformed line or row is reported with its line number and reason and
nothing of it is stored; the rest of the file imports. Rows whose
``external_id`` already exists in the project are skipped, so re-importing a
file changes nothing. An item with no id gets the first 24 hex digits of the
sha256 of its prompt, context and response.
"""

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from django.db import transaction

from annotations.models import Decision, Item, Project, Review

TEXT_FIELDS = ("prompt", "context", "response", "reference", "source_model", "task_type")
REQUIRED_FIELDS = ("prompt", "response")
ID_FIELDS = ("external_id", "id")
BATCH_SIZE = 1000
FORMATS = ("jsonl", "csv")


class ImportFormatError(ValueError):
    """The file as a whole cannot be read (unknown format, not UTF-8, no header)."""


@dataclass
class RowError:
    """One line (JSONL) or row (CSV, numbered by its first line) that was not stored."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import stored: counts, and every line that was not stored with its reason."""

    created: int = 0
    existing: int = 0
    labels: int = 0
    errors: list[RowError] = field(default_factory=list)
    fatal: str = ""

    @property
    def rows(self) -> int:
        return self.created + self.existing + len(self.errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "existing": self.existing,
            "labels": self.labels,
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


def _jsonl_records(stream: IO[bytes]) -> Iterator[tuple[int, dict | None, str]]:
    for line_no, raw in enumerate(stream, start=1):
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line_no, None, f"not UTF-8 (byte {exc.start})"
            continue
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            yield line_no, None, f"invalid JSON: {exc.msg} at column {exc.colno}"
            continue
        if not isinstance(record, dict):
            yield line_no, None, f"expected a JSON object, got {type(record).__name__}"
            continue
        yield line_no, record, ""


def _csv_records(stream: IO[bytes]) -> Iterator[tuple[int, dict | None, str]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.DictReader(text)
    start = 2
    try:
        if not reader.fieldnames:
            raise ImportFormatError("the CSV file has no header row")
        missing = [name for name in REQUIRED_FIELDS if name not in reader.fieldnames]
        if missing:
            raise ImportFormatError(f"the CSV header has no {' or '.join(missing)} column")
        for row in reader:
            if None in row:
                yield (
                    start,
                    None,
                    f"{len(reader.fieldnames) + len(row[None])} cells for {len(reader.fieldnames)} columns",
                )
            elif any(value is None for value in row.values()):
                yield start, None, f"fewer cells than the {len(reader.fieldnames)} columns"
            else:
                record = dict(row)
                if record.get("metadata"):
                    try:
                        record["metadata"] = json.loads(record["metadata"])
                    except json.JSONDecodeError as exc:
                        yield start, None, f"metadata is not valid JSON: {exc.msg}"
                        start = reader.line_num + 1
                        continue
                yield start, record, ""
            start = reader.line_num + 1
    except UnicodeDecodeError as exc:
        raise ImportFormatError(f"not UTF-8 near line {start} (byte {exc.start} of a read block)") from None
    except csv.Error as exc:
        raise ImportFormatError(f"CSV error at line {reader.line_num}: {exc}") from None
    finally:
        text.detach()


def iter_records(stream: IO[bytes], fmt: str) -> Iterator[tuple[int, dict | None, str]]:
    """``(line, record, problem)`` per JSONL line or CSV row; ``record`` is None when ``problem`` says why.

    Raises ImportFormatError for an unknown format or, for CSV, a file that
    cannot be read further (not UTF-8, broken quoting).
    """
    if fmt == "jsonl":
        return _jsonl_records(stream)
    if fmt == "csv":
        return _csv_records(stream)
    raise ImportFormatError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")


def _clean(record: dict, label_field: str) -> tuple[dict, str | None]:
    """Validate one record; returns (item fields, label or None). Raises ValueError with the reason."""
    fields: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        value = record.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {type(value).__name__}")
        fields[name] = value
    for name in REQUIRED_FIELDS:
        if not fields[name].strip():
            raise ValueError(f"{name} is missing or empty")
    external_id = next((record[k] for k in ID_FIELDS if record.get(k) not in (None, "")), None)
    if external_id is None:
        digest = hashlib.sha256("\x1f".join((fields["prompt"], fields["context"], fields["response"])).encode())
        external_id = digest.hexdigest()[:24]
    if not isinstance(external_id, str | int) or isinstance(external_id, bool):
        raise ValueError(f"external_id must be a string or integer, got {type(external_id).__name__}")
    external_id = str(external_id)
    if len(external_id) > 255:
        raise ValueError("external_id is longer than 255 characters")
    metadata = record.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be an object, got {type(metadata).__name__}")
    known = {*TEXT_FIELDS, *ID_FIELDS, "metadata", label_field}
    extra = {k: v for k, v in record.items() if k not in known and v not in (None, "")}
    fields["metadata"] = {**extra, **metadata}
    fields["external_id"] = external_id
    label = record.get(label_field)
    if label in (None, ""):
        return fields, None
    if not isinstance(label, str) or label.strip().lower() not in Decision.values:
        raise ValueError(f"{label_field} must be accept or reject, got {label!r}")
    return fields, label.strip().lower()


def _store(project: Project, batch: list[tuple[dict, str | None]], report: ImportReport) -> None:
    ids = [fields["external_id"] for fields, _ in batch]
    with transaction.atomic():
        existing = set(Item.objects.filter(project=project, external_id__in=ids).values_list("external_id", flat=True))
        new = [(fields, label) for fields, label in batch if fields["external_id"] not in existing]
        Item.objects.bulk_create([Item(project=project, **fields) for fields, _ in new])
        labelled = {fields["external_id"]: label for fields, label in new if label}
        if labelled:
            # bulk_create sets pks on PostgreSQL and SQLite, but look them up to stay backend-neutral.
            pks = Item.objects.filter(project=project, external_id__in=list(labelled)).values_list("external_id", "pk")
            Review.objects.bulk_create(
                [Review(item_id=pk, decision=labelled[ext], origin=Review.Origin.IMPORT) for ext, pk in pks]
            )
    report.created += len(new)
    report.existing += len(existing)
    report.labels += len(labelled)


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
    after every batch. Returns an ImportReport; a file that cannot be read at
    all (unknown format, CSV not UTF-8) sets ``report.fatal`` after storing the
    rows read before the fault.
    """
    records = iter_records(stream, fmt)
    report = ImportReport()
    effective_label_field = label_field if import_labels else "\x00no-label"
    seen: dict[str, int] = {}
    batch: list[tuple[dict, str | None]] = []
    try:
        for line_no, record, problem in records:
            if record is None:
                report.errors.append(RowError(line_no, problem))
                continue
            try:
                fields, label = _clean(record, effective_label_field)
            except ValueError as exc:
                report.errors.append(RowError(line_no, str(exc)))
                continue
            first = seen.setdefault(fields["external_id"], line_no)
            if first != line_no:
                report.errors.append(
                    RowError(line_no, f"duplicate external_id {fields['external_id']!r} (first on line {first})")
                )
                continue
            batch.append((fields, label))
            if len(batch) >= BATCH_SIZE:
                _store(project, batch, report)
                batch = []
                if progress:
                    progress(report.rows)
    except ImportFormatError as exc:
        report.fatal = str(exc)
    if batch:
        _store(project, batch, report)
    if progress:
        progress(report.rows)
    return report
