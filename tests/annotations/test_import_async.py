"""A REST import answered before it is done: ``Prefer: respond-async`` (RFC 7240) or a file over
``LARRY_IMPORT_INLINE_MAX_BYTES`` gets 202 with an import job, run by a Celery worker (without a broker, by the
web process's background thread); the job endpoints; the upload moved into the media folder, not copied."""

import json
import os
import threading
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import RequestFactory
from django.urls import reverse

from annotations.models import ImportJob, Item, Project, Review
from annotations.services import import_job_create
from judging.models import GateDecision
from larry_web import background
from larry_web.http import prefers_async
from larry_web.uploads import TemporaryFileUploadHandler
from tests.judging.test_certification_worker import Api, regated, serve, wait_for
from tests.test_background import _hold, _holding
from tests.test_rest_api import auth


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def jsonl(n: int, start: int = 0) -> bytes:
    """``n`` JSONL items ``a<start>``, ``a<start+1>``, ..., each with a prior label: reject."""
    rows = (
        {"id": f"a{i}", "prompt": f"Question {i}?", "response": f"Answer {i}.", "human_label": "reject"}
        for i in range(start, start + n)
    )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def post_import(client, project, user, content: bytes, name: str = "items.jsonl", **headers):
    url = reverse("annotations:api_import", args=[project.slug])
    return client.post(url, {"file": SimpleUploadedFile(name, content)}, headers=headers, **auth(user))


@pytest.mark.parametrize(
    ("prefer", "expected"),
    [
        ("respond-async", True),
        ("respond-async, wait=10", True),
        ("wait=10, respond-async", True),
        ("wait=10,respond-async", True),
        ("RESPOND-ASYNC", True),
        ("  respond-async  ", True),
        ("respond-async; foo=bar", True),
        ("return=minimal", False),
        ("return=minimal, wait=5", False),
        ("respond-asynchronously", False),
        ("x-respond-async", False),
        ("handling=strict", False),
        ("", False),
    ],
)
def test_the_prefer_header_asks_for_an_async_answer_only_with_respond_async(prefer, expected):
    request = RequestFactory().post("/", headers={"Prefer": prefer} if prefer else {})
    assert prefers_async(request) is expected


def test_respond_async_answers_202_with_the_job_and_its_location(
    client, project, lead, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):  # the task runs after commit, after the answer
        answer = post_import(client, project, lead, jsonl(3), prefer="RESPOND-ASYNC, wait=10")  # any case
    job = ImportJob.objects.get()
    assert answer.status_code == 202, answer.content
    assert answer["Preference-Applied"] == "respond-async"
    url = f"http://testserver/api/projects/{project.slug}/imports/{job.pk}/"
    assert answer["Location"] == url
    body = answer.json()
    fields = "id status filename format bytes_total bytes_read rows_read report error created_at started_at finished_at"
    assert set(body) == {*fields.split(), "url"}
    assert (body["id"], body["url"], body["filename"], body["format"]) == (job.pk, url, "items.jsonl", "jsonl")
    assert body["bytes_total"] == len(jsonl(3)) and job.created_by == lead
    assert (body["status"], body["report"], body["started_at"], body["rows_read"]) == ("queued", None, None, 0)
    assert body["error"] == ""

    body = client.get(answer["Location"], **auth(lead)).json()  # the task ran in-process once committed
    assert body["status"] == "done" and body["finished_at"] and body["error"] == ""
    assert body["report"] == {
        "created": 3,
        "existing": 0,
        "labels": 3,
        "blank": 0,
        "errors": [],
        "fatal": "",
        "regating": True,
    }
    assert Item.objects.filter(project=project).count() == 3 and Review.objects.count() == 3


def test_without_respond_async_a_small_file_is_imported_in_the_request(client, project, lead):
    answer = post_import(client, project, lead, jsonl(2), prefer="return=minimal")
    assert answer.status_code == 200 and "Preference-Applied" not in answer
    assert answer.json()["created"] == 2 and answer.json()["regating"] is True
    assert not ImportJob.objects.exists()


def test_a_file_over_the_inline_limit_becomes_a_job_without_being_asked(
    client, project, lead, settings, django_capture_on_commit_callbacks
):
    at_limit = jsonl(2)
    settings.LARRY_IMPORT_INLINE_MAX_BYTES = len(at_limit)
    answer = post_import(client, project, lead, at_limit)
    assert answer.status_code == 200 and answer.json()["created"] == 2  # at the limit: still in the request
    with django_capture_on_commit_callbacks(execute=True):
        answer = post_import(client, project, lead, jsonl(3, start=2))
    assert answer.status_code == 202, answer.content
    assert "Preference-Applied" not in answer  # nothing was asked: the size decided
    job = client.get(answer["Location"], **auth(lead)).json()
    assert job["status"] == "done" and job["report"]["created"] == 3
    assert Item.objects.filter(project=project).count() == 5


def test_a_bad_file_ends_the_job_failed_with_the_error_keeping_what_came_before(
    client, project, lead, django_capture_on_commit_callbacks
):
    bad = b"id,prompt,response\nk1,p,r\nk2,\xff,r\n"
    with django_capture_on_commit_callbacks(execute=True):
        answer = post_import(client, project, lead, bad, "items.csv", prefer="respond-async")
    assert answer.status_code == 202
    job = client.get(answer["Location"], **auth(lead)).json()
    assert job["status"] == "failed" and "line 3 is not UTF-8" in job["error"]
    assert job["report"]["created"] == 1 and job["report"]["fatal"] == job["error"]
    assert list(Item.objects.filter(project=project).values_list("external_id", flat=True)) == ["k1"]


def test_a_file_of_no_known_format_is_refused_before_any_job(client, project, lead):
    answer = post_import(client, project, lead, b"id,prompt\n", "notes.txt", prefer="respond-async")
    assert answer.status_code == 400 and "format" in answer.json()
    assert not ImportJob.objects.exists()


def test_the_job_endpoints_list_newest_first_and_show_one(client, project, lead, django_capture_on_commit_callbacks):
    for start in (0, 10, 20):
        with django_capture_on_commit_callbacks(execute=True):
            post_import(client, project, lead, jsonl(2, start=start), prefer="respond-async")
    jobs = list(ImportJob.objects.order_by("pk"))
    url = f"/api/projects/{project.slug}/imports/"
    page = client.get(url, {"page_size": 2}, **auth(lead)).json()
    assert [j["id"] for j in page["results"]] == [jobs[2].pk, jobs[1].pk] and page["next"]
    rest = client.get(page["next"], **auth(lead)).json()
    assert [j["id"] for j in rest["results"]] == [jobs[0].pk] and rest["next"] is None
    one = client.get(f"{url}{jobs[0].pk}/", **auth(lead)).json()
    assert one == rest["results"][0] and one["status"] == "done" and one["report"]["created"] == 2


def test_a_job_still_running_shows_its_progress_and_no_report(client, project, lead):
    job = ImportJob.objects.create(
        project=project, filename="x.jsonl", format="jsonl", status="running", bytes_total=1000, bytes_read=250
    )
    ImportJob.objects.filter(pk=job.pk).update(rows_read=7, report={"created": 3})
    body = client.get(f"/api/projects/{project.slug}/imports/{job.pk}/", **auth(lead)).json()
    assert (body["status"], body["bytes_read"], body["rows_read"], body["report"]) == ("running", 250, 7, None)


def test_import_jobs_are_for_leads_and_staff_404_for_outsiders_403_for_smes(
    client, project, lead, sme, staff, outsider
):
    post_import(client, project, lead, jsonl(1), prefer="respond-async")
    job = ImportJob.objects.get()
    for url in (f"/api/projects/{project.slug}/imports/", f"/api/projects/{project.slug}/imports/{job.pk}/"):
        assert client.get(url, **auth(outsider)).status_code == 404, url
        assert client.get(url, **auth(sme)).status_code == 403, url
        assert client.get(url, **auth(lead)).status_code == 200, url
        assert client.get(url, **auth(staff)).status_code == 200, url
        assert client.get(url).status_code == 401, url
    assert post_import(client, project, sme, jsonl(1, start=5), prefer="respond-async").status_code == 403
    assert post_import(client, project, outsider, jsonl(1, start=5), prefer="respond-async").status_code == 404
    assert ImportJob.objects.count() == 1
    # Another project's job is not reachable through this one.
    other = Project.objects.create(slug="other", name="Other")
    foreign = ImportJob.objects.create(project=other, filename="y.jsonl", format="jsonl")
    assert client.get(f"/api/projects/{project.slug}/imports/{foreign.pk}/", **auth(lead)).status_code == 404


def test_a_big_upload_is_moved_into_the_media_folder_not_copied(
    project, lead, media, django_capture_on_commit_callbacks
):
    handler = TemporaryFileUploadHandler()
    handler.new_file("file", "items.jsonl", "application/octet-stream", 0)
    data = jsonl(2)
    handler.receive_data_chunk(data, 0)
    upload = handler.file_complete(len(data))
    temporary = upload.temporary_file_path()
    assert os.path.dirname(temporary) == str(media / "uploading")  # beside the media files: one file system
    inode = os.stat(temporary).st_ino
    with django_capture_on_commit_callbacks(execute=False):  # the file only, not the import
        job = import_job_create(project=project, upload=upload, fmt="jsonl", import_labels=True, user=lead)
    assert os.stat(job.file.path).st_ino == inode  # renamed: the same file, not a copy
    assert not os.path.exists(temporary)
    upload.close()  # as Django does when the request ends: the moved file is not missed
    assert job.file.read() == data


@pytest.mark.django_db(transaction=True)  # the background thread reads committed rows only
def test_without_a_broker_a_web_process_answers_first_and_imports_on_its_background_thread(client, project, lead):
    background.enable()  # what larry_web.wsgi does
    try:
        started, release = threading.Event(), threading.Event()
        _holding.update(started=started, release=release)
        background.enqueue(_hold, "held")  # the thread is busy: the import waits its turn, after the answer
        assert started.wait(10)
        answer = post_import(client, project, lead, jsonl(50), prefer="respond-async")
        assert answer.status_code == 202 and answer.json()["status"] == "queued", answer.content
        assert not Item.objects.filter(project=project).exists()
        release.set()
        assert background.wait_idle(60)
    finally:
        release.set()
        background.wait_idle(60)
        background.disable()
    job = client.get(answer["Location"], **auth(lead)).json()
    assert job["status"] == "done" and job["report"]["created"] == 50 and job["rows_read"] == 50
    # Then the re-gating (also on that thread): the imported labels decide their items.
    assert GateDecision.objects.filter(item__project=project, outcome="reject", basis="sme").count() == 50


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
class TestWithARealWorker:
    """The app under gunicorn and a Celery worker over Redis, both on PostgreSQL and one media folder."""

    @pytest.fixture
    def worker_env(self, worker_env, tmp_path):
        return {**worker_env, "LARRY_MEDIA_ROOT": str(tmp_path / "shared-media")}

    def test_respond_async_answers_before_the_worker_imports_and_re_gates(self, project, lead, worker_env, worker):
        n = 5000
        with serve(worker_env) as web:
            as_lead = Api(f"{web}/api/projects/{project.slug}", lead)
            began = time.monotonic()
            answer = as_lead.post(
                "/import/", files={"file": ("items.jsonl", jsonl(n))}, headers={"Prefer": "respond-async"}
            )
            answered_s = time.monotonic() - began
            assert answer.status_code == 202, answer.text[:2000]
            assert answer.json()["status"] in ("queued", "running"), (answered_s, answer.json())
            assert answer.headers["Preference-Applied"] == "respond-async"
            location = answer.headers["Location"]
            assert location == f"{web}/api/projects/{project.slug}/imports/{answer.json()['id']}/"

            def finished():
                job = as_lead.get(location).json()
                return job if job["status"] in ("done", "failed") else None

            job = wait_for(finished, "the import job", worker)
            assert job["status"] == "done", (job, worker.log()[-3000:])
            assert (job["report"]["created"], job["rows_read"], job["bytes_read"]) == (n, n, len(jsonl(n)))
            assert [j["id"] for j in as_lead.get("/imports/").json()["results"]] == [job["id"]]
        regated(project, worker)
        assert GateDecision.objects.filter(item__project=project, outcome="reject", basis="sme").count() == n
        assert "annotations.tasks.run_import_job[" in worker.log()

    def test_with_the_broker_down_the_job_fails_saying_so_and_the_request_does_not(self, project, lead, worker_env):
        from tests.judging.test_certification_broker_worker import DEAD_BROKER

        with serve({**worker_env, "CELERY_BROKER_URL": DEAD_BROKER}) as down:
            as_lead = Api(f"{down}/api/projects/{project.slug}", lead)
            answer = as_lead.post(
                "/import/", files={"file": ("items.jsonl", jsonl(3))}, headers={"Prefer": "respond-async"}
            )
            assert answer.status_code == 202, answer.text[:2000]
            job = as_lead.get(answer.headers["Location"]).json()
        assert job["status"] == "failed" and "the task broker could not be reached" in job["error"], job
        assert not Item.objects.filter(project=project).exists()
