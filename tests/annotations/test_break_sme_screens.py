"""The SME review, adjudication and agreement screens as a hostile user tries them (issue 14): NUL characters
and garbage in every field and filter end in a clear answer, never a 500."""

import re

import pytest
from django.contrib.auth import get_user_model

from annotations.models import Adjudication, Membership, Review, ReviewChange
from tests.annotations import test_review_views

queue = test_review_views.queue  # the three queued items of the review views tests (a fixture)
url = test_review_views.url


@pytest.fixture
def lead_with_disagreement(project, sme, queue):
    bob = get_user_model().objects.create_user("bob")
    lead = get_user_model().objects.create_user("lead")
    Membership.objects.create(project=project, user=lead, role=Membership.Role.LEAD)
    Review.objects.create(item=queue[0], reviewer=sme, decision="accept")
    Review.objects.create(item=queue[0], reviewer=bob, decision="reject", reason="tone")
    return lead


# W4: the adjudication page's filters and its reason went to PostgreSQL with a NUL in them: a 500
# (annotations/selectors.py disagreements_filtered, annotations/services.py adjudicate).
@pytest.mark.parametrize("field", ["q", "reviewer", "task_type", "source_model", "reject_reason"])
def test_an_adjudication_filter_with_a_nul_matches_nothing(client, project, lead_with_disagreement, field):
    client.force_login(lead_with_disagreement)
    assert "first answer" in client.get(url("adjudication", project)).content.decode()
    response = client.get(url("adjudication", project), {field: "a\x00b"})
    assert response.status_code == 200
    assert response.context["total"] == 0 and "first answer" not in response.content.decode()


def test_an_adjudication_reason_with_a_nul_is_refused_and_nothing_stored(
    client, project, queue, lead_with_disagreement
):
    client.force_login(lead_with_disagreement)
    response = client.post(
        url("adjudication", project), {"item": queue[0].pk, "decision": "reject", "reason": "a\x00b"}
    )
    assert response.status_code == 400
    assert "the reason contains a NUL character" in response.content.decode()
    assert not Adjudication.objects.exists() and not ReviewChange.objects.exists()


@pytest.mark.parametrize("field", ["reason_other", "comment", "corrected_response", "reason", "decision"])
def test_a_review_with_a_nul_in_any_field_is_refused(client, sme, project, queue, field):
    client.force_login(sme)
    item_id = int(re.search(r"/review/(\d+)/", client.get(url("review", project)).content.decode()).group(1))
    data = {"decision": "reject", "reason": "other", "reason_other": "x", "comment": "", "corrected_response": ""}
    data[field] += "a\x00b"
    assert client.post(url("review_decide", project, item_id), data).status_code == 400
    assert not Review.objects.exists()


@pytest.mark.parametrize("leased_at", ["\x00", "9999-12-31T23:59:59+14:00", "x" * 10_000, "-0001-01-01"])
def test_a_garbage_lease_time_is_ignored(client, sme, project, queue, leased_at):
    client.force_login(sme)
    item_id = int(re.search(r"/review/(\d+)/", client.get(url("review", project)).content.decode()).group(1))
    response = client.post(url("review_decide", project, item_id), {"decision": "accept", "leased_at": leased_at})
    assert response.status_code == 302
    assert Review.objects.get().decision == "accept"
