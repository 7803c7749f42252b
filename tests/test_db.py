"""Writes that commit without waiting for the disk (larry_web.db), and the session store that uses it."""

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from annotations import queue
from annotations.services import review_submit
from larry_web.db import commit_without_waiting
from larry_web.sessions import SessionStore
from tests.conftest import make_items


@pytest.fixture(autouse=True)
def postgresql_only(db):
    if connection.vendor != "postgresql":
        pytest.skip("synchronous_commit is PostgreSQL's")


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_it_holds_for_the_transaction_only():
    with transaction.atomic():
        assert _synchronous_commit() == "on"
        commit_without_waiting()
        assert _synchronous_commit() == "off"
    assert _synchronous_commit() == "on"


@pytest.mark.django_db(transaction=True)
def test_outside_a_transaction_it_changes_nothing():
    commit_without_waiting()  # autocommit: a SET LOCAL would warn and do nothing; it is not sent at all
    assert _synchronous_commit() == "on"


def test_the_next_items_lease_commits_without_waiting_and_the_decision_does_not(project, sme):
    queue.queue_add(project=project, item_ids=[it.pk for it in make_items(project, ["a", "b"])])
    with CaptureQueriesContext(connection) as lease:
        item = queue.next_item(project=project, reviewer=sme)
    assert item is not None
    assert any("synchronous_commit TO OFF" in q["sql"] for q in lease.captured_queries)

    with CaptureQueriesContext(connection) as decision:
        review_submit(item=item, reviewer=sme, decision="accept")
    assert not any("synchronous_commit" in q["sql"] for q in decision.captured_queries)


def test_sessions_save_without_waiting_and_read_back():
    store = SessionStore()
    store["larry_undo_1"] = [3, 4]
    with CaptureQueriesContext(connection) as saving:
        store.save(must_create=True)
    assert any("synchronous_commit TO OFF" in q["sql"] for q in saving.captured_queries)
    assert SessionStore(session_key=store.session_key)["larry_undo_1"] == [3, 4]
