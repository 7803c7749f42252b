"""The review screen: access, htmx partials, storing decisions, escaping."""

import pytest
from django.urls import reverse

from annotations.models import Review
from tests.conftest import make_items


@pytest.fixture
def queue(project):
    items = make_items(project, ["first answer", "second answer", "third answer"])
    project.items.update(in_sme_queue=True)
    return items


def review_url(project):
    return reverse("annotations:review", args=[project.slug])


def test_login_is_required(client, project):
    response = client.get(review_url(project))
    assert response.status_code == 302 and response.url.startswith("/login/")


def test_an_outsider_gets_404(client, outsider, project):
    client.force_login(outsider)
    assert client.get(review_url(project)).status_code == 404
    assert client.get(reverse("judging:project_detail", args=[project.slug])).status_code == 404


def test_staff_see_every_project(client, staff, project):
    client.force_login(staff)
    assert client.get(review_url(project)).status_code == 200


def test_the_page_shows_the_first_queued_item_blind_to_the_judge(client, sme, project, queue):
    client.force_login(sme)
    page = client.get(review_url(project)).content.decode()
    assert "first answer" in page and "second answer" not in page
    assert "verdict" not in page.lower() and "rationale" not in page.lower()


def test_an_htmx_decision_returns_only_the_card_with_the_next_item(client, sme, project, queue):
    client.force_login(sme)
    url = reverse("annotations:review_decide", args=[project.slug, queue[0].pk])
    response = client.post(url, {"decision": "reject", "reason": "inaccurate"}, HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="review-card"') and "<html" not in body
    assert "second answer" in body and "1 of 3" in body
    review = Review.objects.get()
    assert (review.item, review.reviewer, review.decision, review.reason) == (queue[0], sme, "reject", "inaccurate")


def test_a_second_decision_on_the_same_item_is_refused(client, sme, project, queue):
    client.force_login(sme)
    url = reverse("annotations:review_decide", args=[project.slug, queue[0].pk])
    client.post(url, {"decision": "accept"})
    response = client.post(url, {"decision": "reject", "reason": "tone"})
    assert response.status_code == 400 and "already reviewed" in response.content.decode()
    assert Review.objects.get().decision == "accept"


def test_a_bad_decision_is_refused(client, sme, project, queue):
    client.force_login(sme)
    url = reverse("annotations:review_decide", args=[project.slug, queue[0].pk])
    assert client.post(url, {"decision": "maybe"}).status_code == 400
    assert client.post(url, {"decision": "reject", "reason": " "}).status_code == 400
    assert not Review.objects.exists()


def test_an_outsider_cannot_post_a_decision(client, outsider, project, queue):
    client.force_login(outsider)
    url = reverse("annotations:review_decide", args=[project.slug, queue[0].pk])
    assert client.post(url, {"decision": "accept"}).status_code == 404
    assert not Review.objects.exists()


def test_untrusted_text_is_escaped(client, sme, project):
    make_items(project, ['<script>alert(1)</script><img src=x onerror="alert(2)">'])
    project.items.update(in_sme_queue=True)
    client.force_login(sme)
    page = client.get(review_url(project)).content.decode()
    assert "<script>alert(1)</script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_when_the_queue_is_empty_the_page_says_so(client, sme, project):
    client.force_login(sme)
    assert "Nothing left to review" in client.get(review_url(project)).content.decode()
