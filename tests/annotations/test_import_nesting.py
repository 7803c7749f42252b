"""Deeply nested JSON in an import: each line nested deeper than the limit is refused with its number and reason,
the rest of the file is imported, whichever way the file comes in (``import_items``, the REST endpoint, the
``import_items`` command, the browser upload's task), and what is stored can be read back everywhere.

Before the limit, a line nested a few thousand levels raised RecursionError from the standard library's parser,
and one nested about 1,000 levels from the float check or the serialisation of its metadata: the REST import
answered 500, the command printed a traceback, the browser import failed with the bare RecursionError, and the
good lines of the file were lost.
"""

import csv
import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse
from rest_framework.authtoken.models import Token

from annotations.importers import MAX_NESTING, import_items
from annotations.models import ImportJob, Item

TOO_DEEP = f"nested deeper than {MAX_NESTING} levels"


def arrays(levels: int, core: str = "0") -> str:
    """JSON text of ``levels`` arrays, one inside the other, around ``core``: nested ``levels`` levels deep."""
    return "[" * levels + core + "]" * levels


def line(external_id: str, depth: int, core: str = "0", **extra) -> str:
    """A JSONL line nested exactly ``depth`` levels deep (its own object is level 1, metadata level 2)."""
    head = json.dumps({"id": external_id, "prompt": "p", "response": "r", **extra})[:-1]
    return f'{head}, "metadata": {{"x": {arrays(depth - 2, core)}}}}}'


def good(external_id: str) -> str:
    return json.dumps({"id": external_id, "prompt": "Price?", "response": "$4 a month."})


# Line number -> what it is; the good lines and the one at the limit are stored, the others refused.
JSONL_LINES = {
    1: good("g1"),
    2: line("deep-5000", 5000),
    3: line("deep-1000", 1000),
    4: line("just-over", MAX_NESTING + 1),
    5: line("at-the-limit", MAX_NESTING),
    # orjson reads up to 1,024 levels; then a float sends the line to the float check and the standard library.
    6: line("float-900", 900, core="1.5"),
    # Deep in a field that is not metadata: it is kept in metadata, so it is serialised too.
    7: '{"id": "extra-990", "prompt": "p", "response": "r", "trace": ' + arrays(990) + "}",
    # orjson refuses the lone surrogate first, so the standard library parses the 5,000 levels.
    8: line("surrogate-5000", 5000, note="\ud800"),
    # A float before the deep part: the float check stops at the float, so the depth is measured on its own.
    9: line("float-first-900", 900, score=0.5),
    10: good("g2"),
}
REFUSED = [2, 3, 4, 6, 7, 8, 9]
STORED = {"g1", "at-the-limit", "g2"}


def jsonl_file() -> bytes:
    return "".join(JSONL_LINES[n] + "\n" for n in sorted(JSONL_LINES)).encode("utf-8", "surrogatepass")


def csv_file() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "prompt", "response", "metadata"])
    writer.writerow(["c1", "p", "r", '{"k": 1}'])  # line 2
    writer.writerow(["c-5000", "p", "r", '{"x": ' + arrays(4999) + "}"])  # line 3
    writer.writerow(["c-1000", "p", "r", '{"x": ' + arrays(999) + "}"])  # line 4
    writer.writerow(["c-just-over", "p", "r", '{"x": ' + arrays(MAX_NESTING) + "}"])  # line 5
    writer.writerow(["c-at-the-limit", "p", "r", '{"x": ' + arrays(MAX_NESTING - 1) + "}"])  # line 6
    writer.writerow(["c-float-900", "p", "r", '{"x": ' + arrays(899, "1.5") + "}"])  # line 7
    writer.writerow(["c2", "p", "r", ""])  # line 8
    return out.getvalue().encode()


def assert_refused(errors: list[tuple[int, str]], lines: list[int], prefix: str = "") -> None:
    assert [n for n, _ in errors] == lines, errors
    for n, reason in errors:
        assert reason == f"{prefix}{TOO_DEEP} of arrays and objects", (n, reason)


def test_import_items_refuses_each_too_deep_jsonl_line_and_stores_the_rest(project):
    report = import_items(project=project, stream=io.BytesIO(jsonl_file()), fmt="jsonl")
    assert_refused([(e.line, e.reason) for e in report.errors], REFUSED)
    assert (report.created, report.fatal) == (3, "")
    assert set(Item.objects.values_list("external_id", flat=True)) == STORED
    assert Item.objects.get(external_id="at-the-limit").metadata == {"x": json.loads(arrays(MAX_NESTING - 2))}


def test_import_items_refuses_each_too_deep_csv_metadata_cell_and_stores_the_rest(project):
    report = import_items(project=project, stream=io.BytesIO(csv_file()), fmt="csv")
    assert_refused([(e.line, e.reason) for e in report.errors], [3, 4, 5, 7], prefix="metadata is ")
    assert (report.created, report.fatal) == (3, "")
    assert set(Item.objects.values_list("external_id", flat=True)) == {"c1", "c-at-the-limit", "c2"}


def test_the_rest_import_answers_200_with_a_report_of_each_too_deep_line(client, lead, project):
    upload = io.BytesIO(jsonl_file())
    upload.name = "items.jsonl"
    token = Token.objects.create(user=lead)
    response = client.post(
        reverse("annotations:api_import", args=[project.slug]),
        {"file": upload},
        HTTP_AUTHORIZATION=f"Token {token.key}",
    )
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert_refused([(e["line"], e["reason"]) for e in body["errors"]], REFUSED)
    assert body["created"] == 3 and set(Item.objects.values_list("external_id", flat=True)) == STORED


def test_the_import_command_reports_each_too_deep_line_without_a_traceback(project, tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(jsonl_file())
    out, err = io.StringIO(), io.StringIO()
    call_command("import_items", project.slug, str(path), "--no-gate", stdout=out, stderr=err)
    assert "3 items created" in out.getvalue() and f"{len(REFUSED)} lines not stored" in out.getvalue()
    for n in REFUSED:
        assert f"{path}:{n}: {TOO_DEEP} of arrays and objects" in err.getvalue()
    assert "Traceback" not in err.getvalue() and "RecursionError" not in err.getvalue()
    assert set(Item.objects.values_list("external_id", flat=True)) == STORED


def test_a_browser_upload_reports_each_too_deep_line_in_the_jobs_report(
    client, lead, project, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path / "media"
    client.force_login(lead)
    data = {"file": SimpleUploadedFile("items.jsonl", jsonl_file()), "import_labels": "on"}
    with django_capture_on_commit_callbacks(execute=True):  # no broker in tests: the import task runs here
        client.post(reverse("annotations:import", args=[project.slug]), data)
    job = ImportJob.objects.get()
    assert (job.status, job.error) == ("done", "")
    assert_refused([(e["line"], e["reason"]) for e in job.report["errors"]], REFUSED)
    page = client.get(job.get_absolute_url()).content.decode()
    assert f"{TOO_DEEP} of arrays and objects" in page
    assert set(Item.objects.values_list("external_id", flat=True)) == STORED


@pytest.mark.parametrize("levels", [MAX_NESTING])
def test_metadata_at_the_limit_reads_back_over_rest_and_in_the_admin(client, lead, project, levels):
    # The deepest metadata an import stores: a CSV metadata cell at the limit. Every reader must cope with it
    # (this fails if the limit is raised past what Django, DRF, orjson or the admin can walk).
    cell = '{"x": ' + arrays(levels - 1) + "}"
    text = f'id,prompt,response,metadata\ndeepest,p,r,"{cell.replace(chr(34), chr(34) * 2)}"\n'
    report = import_items(project=project, stream=io.BytesIO(text.encode()), fmt="csv")
    assert (report.created, report.errors) == (1, [])
    token = Token.objects.create(user=lead)
    items = client.get(
        f"/api/projects/{project.slug}/items/", {"external_id": "deepest"}, HTTP_AUTHORIZATION=f"Token {token.key}"
    )
    assert items.status_code == 200 and items.json()["results"][0]["metadata"] == json.loads(cell)
    admin = get_user_model().objects.create_superuser("root", password="root-pass-123")
    client.force_login(admin)
    item = Item.objects.get(external_id="deepest")
    assert client.get(reverse("admin:annotations_item_change", args=[item.pk])).status_code == 200
