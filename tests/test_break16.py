"""Hostile review of issue 16's changes (202 imports and draws, the queue on the slots, persistent connections):
each test here is a finding; xfail(strict) ones are bugs still open."""

import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connections, transaction
from django.urls import reverse

from annotations.models import ImportJob, Item, Project, SampleDraw, SampleMembership, Slot
from annotations.queue import in_sme_queue
from annotations.sampling import sample_draw_run
from tests.annotations.test_import_async import jsonl
from tests.conftest import make_items
from tests.test_rest_api import auth


@pytest.fixture(autouse=True)
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def post_import(client, project, user, content: bytes, name: str, **headers):
    url = reverse("annotations:api_import", args=[project.slug])
    return client.post(url, {"file": SimpleUploadedFile(name, content)}, headers=headers, **auth(user))


@pytest.mark.xfail(
    strict=True, reason="a 202 import of a file whose name is long in UTF-8 bytes is a 500 (ENAMETOOLONG)"
)
def test_a_202_import_of_a_file_with_a_long_unicode_name_is_not_a_500(client, project, lead):
    # 200 characters, 400 bytes in UTF-8: UploadedFile keeps names to 255 characters, file systems to 255 bytes.
    name = "é" * 200 + ".jsonl"
    answer = post_import(client, project, lead, jsonl(3), name, Prefer="respond-async")
    assert answer.status_code == 202, answer.content[:500]


def test_a_202_import_of_a_file_with_a_nul_in_its_name(client, project, lead):
    answer = post_import(client, project, lead, jsonl(3), "a\x00b.jsonl", Prefer="respond-async")
    assert answer.status_code in (202, 400), answer.content[:500]


def test_a_202_import_of_a_file_with_a_path_in_its_name_stays_in_the_media_folder(client, project, lead, media):
    answer = post_import(client, project, lead, jsonl(3), "../../../../etc/x.jsonl", Prefer="respond-async")
    assert answer.status_code == 202, answer.content[:500]
    job = ImportJob.objects.get()
    assert job.file.path.startswith(str(media)) and ".." not in job.file.name, job.file.name


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_background_draw_with_the_broker_down_fails_saying_so_and_the_request_does_not(project, lead, worker_env):
    """Was a 500 with the draw left queued forever (the import job has failed saying so since 1df7d9d)."""
    from tests.judging.test_certification_broker_worker import DEAD_BROKER
    from tests.judging.test_certification_worker import Api, serve

    make_items(project, [f"answer {i}" for i in range(5)])
    with serve({**worker_env, "CELERY_BROKER_URL": DEAD_BROKER}) as down:
        as_lead = Api(f"{down}/api/projects/{project.slug}", lead)
        answer = as_lead.post(
            "/samples/", json={"size": 3, "design": "uniform", "seed": 1}, headers={"Prefer": "respond-async"}
        )
    draw = SampleDraw.objects.get()
    assert answer.status_code == 202, (answer.status_code, answer.text[:500], draw.status)
    assert draw.status == "failed" and "broker" in draw.error, (draw.status, draw.error)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_runs_of_one_queued_draw_at_once_draw_it_once(project, lead):
    """Both runs claim it (running is claimable, for a dead worker's draw) and waited on the project lock; the
    second then drew again: twice the members (with two different inclusion probabilities), twice the queue."""
    make_items(project, [f"answer {i}" for i in range(20)])
    # What sample_draw(later=True) records (outside a transaction it would also run the task at once).
    draw = SampleDraw.objects.create(project=project, design="uniform", seed=1, size=5, status="queued")
    # Hold the project lock, as a draw of this project in progress would, so both runs claim before either draws.
    hold, release = threading.Event(), threading.Event()

    def holder():
        with transaction.atomic():
            Project.objects.select_for_update().filter(pk=project.pk).first()
            hold.set()
            release.wait(30)
        connections.close_all()

    results = []

    def run():
        try:
            results.append(sample_draw_run(draw.pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    hold.wait(10)
    threads += [threading.Thread(target=run) for _ in range(2)]
    for t in threads[1:]:
        t.start()
    import time

    time.sleep(1.0)  # both runs claimed and wait on the project lock
    release.set()
    for t in threads:
        t.join(30)
    draw.refresh_from_db()
    assert draw.status == "done"
    assert SampleMembership.objects.filter(draw=draw).count() == 5
    assert Item.objects.filter(project=project).filter(in_sme_queue()).count() == 5


def test_migrating_back_over_0012_keeps_queued_items_queued(transactional_db):
    """Was: every item came back unqueued (the in_sme_queue column re-added False; 0012's data step had no reverse)."""
    from tests.migrating import migrate

    try:
        apps = migrate([("annotations", "0012_queue_on_slots")])
        HistoricalProject = apps.get_model("annotations", "Project")
        HistoricalItem = apps.get_model("annotations", "Item")
        HistoricalSlot = apps.get_model("annotations", "Slot")
        project = HistoricalProject.objects.create(slug="p", name="P")
        queued = HistoricalItem.objects.create(project=project, external_id="1", prompt="q", response="a")
        HistoricalItem.objects.create(project=project, external_id="2", prompt="q", response="b")
        HistoricalSlot.objects.create(item=queued, project=project, priority=0, done=False)
        apps = migrate([("annotations", "0011_project_change_account")])
        flags = dict(apps.get_model("annotations", "Item").objects.values_list("external_id", "in_sme_queue"))
    finally:
        migrate()
    assert flags == {"1": True, "2": False}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_queueings_of_one_item_at_once_open_its_slots_once(project):
    """Was: both opened its slots (a lead's double click on "queue", a draw and a judge run's escalations at once):
    queueing writes no item row any more, so nothing made the second wait for the first."""
    from annotations.queue import queue_add

    items = make_items(project, ["a", "b", "c"])
    ids = [i.pk for i in items]
    opened, go_on = threading.Event(), threading.Event()

    def first():
        try:
            with transaction.atomic():
                queue_add(project=project, item_ids=ids)
                opened.set()
                go_on.wait(10)
        finally:
            connections.close_all()

    other = threading.Thread(target=first)
    other.start()
    opened.wait(10)
    second = threading.Thread(target=lambda: (queue_add(project=project, item_ids=ids), connections.close_all()))
    second.start()
    second.join(1)  # it waits for the first
    assert second.is_alive()
    go_on.set()
    other.join(10)
    second.join(10)
    assert Slot.objects.filter(item__project=project).count() == 3 * project.reviews_per_item
