"""The import page for leads: upload, the job's progress and report, the errors download, access."""

import csv
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from annotations.models import ImportJob, Item, Review


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


LINES = [
    json.dumps({"id": "u1", "prompt": "What does Plus cost?", "response": "$4 a month.", "human_label": "accept"}),
    '{"id": "u2", "prompt": <script>alert(1)</script>',
    json.dumps({"id": "u3", "prompt": "Hi", "response": "Hello", "human_label": "<b>maybe</b>"}),
    json.dumps({"id": "u4", "prompt": "Refunds?", "response": "5 days."}),
]


def upload(client, project, content: bytes, name="items.jsonl", **fields):
    data = {"file": SimpleUploadedFile(name, content), "import_labels": "on", **fields}
    return client.post(reverse("annotations:import", args=[project.slug]), data)


def test_a_lead_uploads_a_file_and_sees_the_report_with_every_bad_line_escaped(
    client, lead, project, django_capture_on_commit_callbacks
):
    client.force_login(lead)
    with django_capture_on_commit_callbacks(execute=True):
        response = upload(client, project, ("\n".join(LINES) + "\n\n").encode())
    job = ImportJob.objects.get()
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert (job.status, job.format, job.created_by, job.rows_read) == ("done", "jsonl", lead, 4)
    assert job.bytes_read == job.bytes_total == len(("\n".join(LINES) + "\n\n").encode())
    assert (job.report["created"], job.report["existing"], job.report["labels"]) == (2, 0, 1)
    assert job.file.read().decode().splitlines() == [*LINES, ""]
    assert set(Item.objects.values_list("external_id", flat=True)) == {"u1", "u4"}
    assert Review.objects.get().origin == "import"

    page = client.get(job.get_absolute_url()).content.decode()
    assert "hx-trigger" not in page  # finished: no more polling
    assert "<th>Items created</th><td>2</td>" in page
    assert "<th>Lines not stored</th><td>2</td>" in page
    assert "<th>Blank lines (skipped)</th><td>1</td>" in page
    assert "&lt;b&gt;maybe&lt;/b&gt;" in page and "<b>maybe</b>" not in page
    assert "invalid JSON" in page

    download = client.get(reverse("annotations:import_job_errors", args=[project.slug, job.pk]))
    rows = list(csv.reader(io.StringIO(download.content.decode())))
    assert rows[0] == ["line", "reason"] and [r[0] for r in rows[1:]] == ["2", "3"]
    assert "human_label must be accept or reject, got '<b>maybe</b>'" == rows[2][1]


def test_the_page_lists_a_capped_number_of_errors_and_polls_while_running(client, lead, project):
    from annotations import views

    errors = [{"line": n, "reason": f"=bad {n}"} for n in range(1, views.ERRORS_SHOWN + 21)]
    job = ImportJob.objects.create(
        project=project, filename="x.jsonl", format="jsonl", status="done", report={"created": 0, "errors": errors}
    )
    client.force_login(lead)
    page = client.get(job.get_absolute_url()).content.decode()
    assert f"(the first {views.ERRORS_SHOWN} of {views.ERRORS_SHOWN + 20})" in page
    assert page.count("=bad ") == views.ERRORS_SHOWN
    download = client.get(reverse("annotations:import_job_errors", args=[project.slug, job.pk])).content.decode()
    assert download.count("'=bad ") == views.ERRORS_SHOWN + 20  # no formula for a spreadsheet

    ImportJob.objects.filter(pk=job.pk).update(status="running", bytes_read=250, bytes_total=1000, rows_read=7)
    partial = client.get(job.get_absolute_url(), HTTP_HX_REQUEST="true").content.decode()
    assert partial.strip().startswith('<section id="import-progress"') and 'hx-trigger="every 1s"' in partial
    assert 'value="25"' in partial and "7 rows read" in partial


def test_csv_is_detected_and_labels_can_be_left_out(client, staff, project, django_capture_on_commit_callbacks):
    client.force_login(staff)
    content = b"id,prompt,response,human_label\nc1,p,r,accept\n"
    with django_capture_on_commit_callbacks(execute=True):
        upload(client, project, content, name="export-from-a-sheet.txt", import_labels="")
    job = ImportJob.objects.get()
    assert (job.format, job.status, job.report["created"], job.report["labels"]) == ("csv", "done", 1, 0)
    assert not Review.objects.exists()


def test_a_csv_that_stops_on_a_fault_fails_with_the_reason_and_keeps_what_it_stored(
    client, lead, project, django_capture_on_commit_callbacks
):
    client.force_login(lead)
    with django_capture_on_commit_callbacks(execute=True):
        upload(client, project, b"id,prompt,response\nk1,p,r\nk2,\xff,r\n", name="items.csv")
    job = ImportJob.objects.get()
    assert (job.status, job.error, job.report["created"]) == ("failed", job.report["fatal"], 1)
    assert "line 3 is not UTF-8" in job.error
    assert "line 3 is not UTF-8" in client.get(job.get_absolute_url()).content.decode()


def test_an_empty_file_is_refused_on_the_form(client, lead, project):
    client.force_login(lead)
    response = upload(client, project, b"\n\n", name="notes.txt")
    assert response.status_code == 400 and "the file is empty" in response.content.decode()
    assert not ImportJob.objects.exists()


def test_staff_and_leads_may_import_an_sme_gets_403_and_an_outsider_404(client, staff, lead, sme, outsider, project):
    url = reverse("annotations:import", args=[project.slug])
    job = ImportJob.objects.create(project=project, filename="x.jsonl", format="jsonl", report={"errors": []})
    pages = [url, job.get_absolute_url(), reverse("annotations:import_job_errors", args=[project.slug, job.pk])]
    for user, status in ((staff, 200), (lead, 200), (sme, 403), (outsider, 404)):
        client.force_login(user)
        assert [client.get(page).status_code for page in pages] == [status] * 3, user
        assert upload(client, project, b'{"prompt": "p", "response": "r"}\n').status_code in (
            {200: 302, 403: 403, 404: 404}[status],
        )
    client.logout()
    assert client.get(url).status_code == 302  # to the login page
    assert ImportJob.objects.count() == 3  # the original and one upload each by staff and the lead


def test_the_project_page_links_leads_to_the_import_page(client, lead, project):
    client.force_login(lead)
    page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    assert f'href="{reverse("annotations:import", args=[project.slug])}"' in page


def test_the_admin_lists_imports_read_only(client, project):
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.create_superuser("root", password="root-pass-123")
    ImportJob.objects.create(project=project, filename="<i>items</i>.jsonl", format="jsonl", status="failed")
    client.force_login(admin)
    page = client.get(reverse("admin:annotations_importjob_changelist")).content.decode()
    assert "&lt;i&gt;items&lt;/i&gt;.jsonl" in page and "failed" in page
    assert client.get(reverse("admin:annotations_importjob_add")).status_code == 403
