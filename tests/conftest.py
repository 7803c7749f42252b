"""Shared fixtures: personas (SME, staff, outsider), a project with items, the test judge server."""

import os
import threading
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections

from annotations.models import Item, Project
from tests.celery_worker import BROKER, own_queue, start_worker
from tests.judge_server import JudgeServer
from tests.services import require

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.browser"]  # browser and page, for the UI tests


@pytest.fixture
def staff(db):
    return get_user_model().objects.create_user("staff", password="staff-pass-123", is_staff=True)


@pytest.fixture
def sme(db):
    return get_user_model().objects.create_user("sme", password="sme-pass-123")


@pytest.fixture
def outsider(db):
    return get_user_model().objects.create_user("outsider", password="outsider-pass-123")


@pytest.fixture
def project(db, sme):
    project = Project.objects.create(slug="support", name="Support copilot", guidelines="Be exact about prices.")
    project.members.add(sme)
    return project


@pytest.fixture
def lead(db, project):
    """A project lead: reviews, adjudicates, and sees the judge's and the rules' results."""
    from annotations.models import Membership

    user = get_user_model().objects.create_user("lead", password="lead-pass-123")
    Membership.objects.create(project=project, user=user, role=Membership.Role.LEAD)
    return user


def make_items(project: Project, responses: list[str], **fields) -> list[Item]:
    """Items ``r0, r1, ...`` with the given responses (other fields from ``fields``)."""
    return Item.objects.bulk_create(
        Item(project=project, external_id=f"r{i}", prompt=fields.get("prompt", f"Question {i}?"), response=response)
        for i, response in enumerate(responses)
    )


def label_for_local_classifier(project: Project) -> list[Item]:
    """40 SME-labelled items a local classifier learns from (20 accepts about Plus, 20 rejects naming another
    vendor) and 2 unlabelled ones, one of each kind; returns all 42."""
    from annotations.models import Review

    good = [f"Plus costs $4 a month and keeps versions for 30 days, item {i}." for i in range(20)]
    bad = [f"Switch to another vendor, it is cheaper, item {i}." for i in range(20)]
    items = make_items(project, good + bad + ["Plus costs $4 a month.", "Switch to another vendor."])
    for item in items[:40]:
        Review.objects.create(item=item, decision="accept" if "Plus" in item.response else "reject", origin="import")
    return items


def use_judge(project: Project, base_url: str, model: str = "test-judge", **fields):
    """Make ``project``'s default judge the endpoint at ``base_url`` serving ``model`` (created, or the existing
    default updated); ``fields`` sets others (``api_key``, ``max_in_flight``, ``price_in``, ...). Returns it."""
    from judging.models import JudgeEndpoint

    endpoint, _ = JudgeEndpoint.objects.update_or_create(
        project=project,
        is_default=True,
        defaults={"name": "default judge", "base_url": base_url, "model": model, **fields},
    )
    return endpoint


@pytest.fixture
def llm_project(project, judge_server):
    """``project`` judged by the test judge server (its default endpoint, model ``test-judge``)."""
    use_judge(project, judge_server.base_url)
    return project


def run_concurrently(call, arguments: list[tuple]) -> list[BaseException]:
    """``call(*args)`` for each tuple of ``arguments``, each in a thread of its own with its own database
    connection, all at once; returns what they raised (``[]`` when none did)."""
    errors: list[BaseException] = []

    def run(*args) -> None:
        try:
            call(*args)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()  # this thread's connection

    threads = [threading.Thread(target=run, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.fixture
def judge_server():
    server = JudgeServer().start()
    yield server
    server.stop()


@pytest.fixture
def start_run(django_capture_on_commit_callbacks):
    """``start_run(project)``: create a judge run (with ``endpoint``, when given), run its tasks in-process,
    return the refreshed run; with ``use=True`` a lead then chooses it as the gating policy (``use_run``), as a
    finished run never gates alone."""
    from judging.services import judge_run_create

    def start(project: Project, user=None, endpoint=None, use: bool = False):
        with django_capture_on_commit_callbacks(execute=True):
            run = judge_run_create(project=project, user=user, endpoint=endpoint)
        run.refresh_from_db()
        if use:
            use_run(run, user=user)
        return run

    return start


def queue_all(project: Project) -> None:
    """Put every item of the project into the SME queue (with its review slots)."""
    from annotations.queue import queue_add

    queue_add(project=project, item_ids=list(project.items.values_list("id", flat=True)))


def use_run(run, user=None, threshold: float | None = None):
    """Make ``run`` the project's gating policy (one tier, by its verdicts alone unless ``threshold``), as a lead
    would on the policy page, and run the re-gating it queues. Returns the policy."""
    from django.test import TestCase

    from judging.services import gating_policy_set

    with TestCase.captureOnCommitCallbacks(execute=True):
        return gating_policy_set(project=run.project, tiers=[(run, threshold)], user=user)


@pytest.fixture
def worker_env():
    require("postgres", "redis")
    db = connection.settings_dict
    with own_queue() as queue:
        yield {
            **os.environ,
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "CELERY_BROKER_URL": BROKER,
            "LARRY_CELERY_QUEUE": queue,
            "LARRY_JUDGE_CHUNK_SIZE": "8",
        }


@pytest.fixture
def worker(worker_env):
    """A Celery worker process on this test's own queue; ``worker.log()`` stops it and returns its output."""
    process = start_worker(worker_env, "-c", "2", "-l", "info")

    def log() -> str:
        if process.returncode is None:
            process.terminate()
        return process.communicate(timeout=30)[0]

    process.log = log
    yield process
    if process.returncode is None:
        process.kill()
        process.communicate(timeout=30)
