"""Big sample draws made after the answer (202 Accepted): by a real Celery worker over Redis, by the web process's
background thread without a broker, or failing whole; the draw's detail endpoint; the queue kept on the slots."""

import json
import subprocess
import sys

import pytest
from django.db import connection
from django.urls import reverse

from annotations import queue
from annotations.models import Item, Review, SampleDraw, SampleMembership, Slot
from annotations.queue import in_sme_queue, queue_add
from annotations.sampling import sample_draw
from larry_web import background
from tests.annotations.test_sample_designs import auth
from tests.conftest import ROOT, make_items

URL = "/api/projects/support/samples/"

# Two POSTs through Django's whole stack in a process with the broker set (as a web process behind gunicorn):
# one asks for respond-async, one is above LARRY_SAMPLE_INLINE_MAX_ITEMS (10 there).
POST_TWO = """
import json
from rest_framework.test import APIClient
client = APIClient(SERVER_NAME="localhost", HTTP_AUTHORIZATION="Token {token}")
out = []
for body, headers in [({{"size": 12, "design": "uniform", "seed": 3}}, {{"HTTP_PREFER": "respond-async, wait=5"}}),
                      ({{"size": 30, "design": "uniform", "seed": 4}}, {{}})]:
    r = client.post("{url}", body, format="json", **headers)
    out.append({{"status": r.status_code, "location": r.get("Location"), "applied": r.get("Preference-Applied"),
                "body": r.json()}})
print("RESULT " + json.dumps(out))
"""


def wait_done(client, location: str, lead, seconds: float = 90) -> dict:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        draw = client.get(location, **auth(lead)).json()
        if draw["status"] in ("done", "failed"):
            return draw
        time.sleep(0.1)
    raise AssertionError(f"draw at {location} not finished after {seconds} s: {draw}")


@pytest.mark.worker
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_makes_the_draws_answered_202(client, project, lead, worker_env, worker):
    items = make_items(project, [f"answer {i}" for i in range(50)])
    from rest_framework.authtoken.models import Token

    token, _ = Token.objects.get_or_create(user=lead)
    script = POST_TWO.format(token=token.key, url=URL)
    env = {**worker_env, "LARRY_SAMPLE_INLINE_MAX_ITEMS": "10"}
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    asked, big = json.loads(done.stdout.split("RESULT ", 1)[1])
    # Answered before the work: queued, with where to poll; the preference is said to be honoured when sent.
    assert asked["status"] == 202 and asked["applied"] == "respond-async" and asked["body"]["status"] == "queued"
    assert asked["location"] == f"http://localhost{URL}{asked['body']['id']}/"
    assert big["status"] == 202 and big["applied"] is None and big["location"].endswith(f"/{big['body']['id']}/")
    first = wait_done(client, asked["location"].removeprefix("http://localhost"), lead)
    second = wait_done(client, big["location"].removeprefix("http://localhost"), lead)
    assert first["status"] == second["status"] == "done", worker.log()
    # Draws take turns (in either order, on a worker of two processes): the second's population is what the
    # first left.
    assert (first["drawn"], second["drawn"]) == (12, 30)
    assert sorted([first["population"], second["population"]]) in ([20, 50], [38, 50])
    assert first["error"] == "" and first["started_at"] and first["finished_at"]
    # Done means every drawn item is queued, with its slot, and none twice.
    members = list(SampleMembership.objects.values_list("item_id", flat=True))
    assert len(members) == len(set(members)) == 42
    assert set(Item.objects.filter(in_sme_queue()).values_list("id", flat=True)) == set(members)
    assert Slot.objects.count() == 42 and {i.pk for i in items} >= set(members)


@pytest.mark.django_db(transaction=True)  # the background thread reads committed rows only
def test_without_a_broker_the_web_process_thread_makes_it(client, project, lead, settings):
    make_items(project, [f"answer {i}" for i in range(30)])
    settings.LARRY_SAMPLE_INLINE_MAX_ITEMS = 5
    background.enable()
    try:
        response = client.post(URL, {"size": 20, "design": "uniform"}, content_type="application/json", **auth(lead))
        assert response.status_code == 202 and "Preference-Applied" not in response
        assert response.json()["status"] in ("queued", "running", "done")
        assert background.wait_idle()
    finally:
        background.disable()
    draw = client.get(response["Location"], **auth(lead)).json()
    assert draw["status"] == "done" and draw["drawn"] == 20
    assert Item.objects.filter(in_sme_queue()).count() == 20


def test_a_small_draw_is_still_made_in_the_request(client, project, lead):
    make_items(project, [f"answer {i}" for i in range(20)])
    response = client.post(URL, {"size": 5, "design": "uniform"}, content_type="application/json", **auth(lead))
    assert response.status_code == 201 and "Location" not in response and "Preference-Applied" not in response
    assert response.json()["status"] == "done" and response.json()["drawn"] == 5
    assert Item.objects.filter(in_sme_queue()).count() == 5


@pytest.mark.postgres
def test_a_draw_that_fails_leaves_nothing_queued_and_says_why(
    client, project, lead, django_capture_on_commit_callbacks
):
    if connection.vendor != "postgresql":
        pytest.skip("the refusing trigger is PostgreSQL's")
    make_items(project, [f"answer {i}" for i in range(10)])
    with connection.cursor() as cursor:  # the database refuses the slots: the queueing fails half-way
        cursor.execute(
            "CREATE FUNCTION larry_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'slots refused by the test'; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER larry_test_refuse BEFORE INSERT ON annotations_slot "
            "FOR EACH STATEMENT EXECUTE FUNCTION larry_test_refuse()"
        )
    body = {"size": 4, "design": "uniform"}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(URL, body, content_type="application/json", HTTP_PREFER="respond-async", **auth(lead))
    assert response.status_code == 202 and response.json()["status"] == "queued"
    draw = client.get(response["Location"], **auth(lead)).json()
    assert draw["status"] == "failed" and "slots refused by the test" in draw["error"] and draw["drawn"] == 0
    assert not SampleMembership.objects.exists() and not Slot.objects.exists()
    assert not Item.objects.filter(in_sme_queue()).exists()


def test_the_draw_detail_is_for_the_projects_leads(client, project, lead, sme, outsider):
    from annotations.models import Project

    make_items(project, ["a", "b", "c"])
    draw = sample_draw(project=project, size=2, design="uniform", seed=1)
    url = f"{URL}{draw.pk}/"
    assert url == reverse("annotations:api_sample", args=["support", draw.pk])
    assert client.get(url).status_code in (401, 403)
    assert client.get(url, **auth(outsider)).status_code == 404
    assert client.get(url, **auth(sme)).status_code == 403
    got = client.get(url, **auth(lead)).json()
    assert (got["id"], got["status"], got["drawn"], got["created_by"]) == (draw.pk, "done", 2, None)
    other = Project.objects.create(slug="other", name="Other")
    make_items(other, ["x"])
    foreign = sample_draw(project=other, size=1, design="uniform", seed=0)
    assert client.get(f"{URL}{foreign.pk}/", **auth(lead)).status_code == 404
    assert client.get(f"{URL}999999/", **auth(lead)).status_code == 404


def test_the_project_page_shows_a_running_draw_and_refreshes_until_done(
    client, project, lead, settings, django_capture_on_commit_callbacks
):
    make_items(project, [f"answer {i}" for i in range(8)])
    settings.LARRY_SAMPLE_INLINE_MAX_ITEMS = 3
    client.force_login(lead)
    form = {"size": 6, "design": "uniform", "seed": 0, "allocation": "proportional", "uniform_share": 0.2}
    draw = SampleDraw.objects.create(project=project, design="uniform", seed=0, size=6, status="running")
    page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    assert 'hx-trigger="every 2s"' in page and "running since" in page
    draw.delete()
    # A draw above the inline maximum is made after the answer (here when the test's transaction would commit).
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("annotations:sample_draw", args=[project.slug]), form)
    page = client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    assert "of 6 items is being made in the background" in page and 'hx-trigger="every 2s"' not in page
    assert SampleDraw.objects.get().status == "done" and Item.objects.filter(in_sme_queue()).count() == 6


def test_the_queue_lives_on_the_slots(client, project, lead, sme):
    """Queued means having slots: the review screen hands out drawn items, the item lists filter and show it."""
    project.reviews_per_item = 2
    project.save()
    items = make_items(project, ["a", "b", "c", "d", "e"])
    Review.objects.create(item=items[0], decision="accept", origin="import")  # one imported label: one slot done
    for n in range(3):  # more reviews than slots wanted: all of them done slots
        other = type(lead).objects.create(username=f"r{n}")
        Review.objects.create(item=items[1], reviewer=other, decision="reject")
    assert queue_add(project=project, item_ids=[items[0].pk, items[1].pk, items[2].pk, 999_999]) == 3
    assert queue_add(project=project, item_ids=[items[0].pk]) == 0  # already queued
    slots = {i.pk: sorted(Slot.objects.filter(item=i).values_list("done", flat=True)) for i in items[:3]}
    assert slots == {items[0].pk: [False, True], items[1].pk: [True, True, True], items[2].pk: [False, False]}
    handed = queue.next_item(project=project, reviewer=sme)
    assert handed.pk in (items[0].pk, items[2].pk)
    # The REST items list: the field and the filter.
    api = "/api/projects/support/items/"
    rows = client.get(api, **auth(lead)).json()["results"]
    assert {r["external_id"]: r["in_sme_queue"] for r in rows} == {
        "r0": True,
        "r1": True,
        "r2": True,
        "r3": False,
        "r4": False,
    }
    yes = client.get(api, {"in_sme_queue": "true"}, **auth(lead)).json()["results"]
    no = client.get(api, {"in_sme_queue": "false"}, **auth(lead)).json()["results"]
    assert [r["external_id"] for r in yes] == ["r0", "r1", "r2"] and [r["external_id"] for r in no] == ["r3", "r4"]
    # The browser's items list and an item's page.
    client.force_login(lead)
    listed = client.get(reverse("judging:items", args=[project.slug]), {"queued": "no"}).content.decode()
    assert "r3" in listed and ">r0<" not in listed
    page = client.get(reverse("judging:item_detail", args=[project.slug, items[2].pk])).content.decode()
    assert "queued by hand" in page
    # Fewer reviews per item: open slots are trimmed, but a queued item keeps one and stays queued.
    project.reviews_per_item = 1
    project.save()
    queue.slots_sync(project=project)
    assert Item.objects.filter(in_sme_queue()).count() == 3
