"""The review screen and its sibling pages: access, htmx partials, decisions, undo, edit, agreement, adjudication."""

import re
from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db.models import F
from django.urls import reverse

from annotations import queue as sme_queue
from annotations.models import Adjudication, Membership, Review, ReviewChange, Skip, Slot
from annotations.selectors import ground_truth
from tests.conftest import make_items, queue_all


@pytest.fixture
def queue(project):
    items = make_items(project, ["first answer", "second answer", "third answer"])
    queue_all(project)
    return items


def url(name, project, *args):
    return reverse(f"annotations:{name}", args=[project.slug, *args])


def htmx_post(client, path, data=None):
    return client.post(path, data or {}, HTTP_HX_REQUEST="true")


def test_login_is_required(client, project):
    response = client.get(url("review", project))
    assert response.status_code == 302 and response.url.startswith("/login/")


@pytest.mark.parametrize("page", ["review", "my_reviews", "agreement", "adjudication"])
def test_an_outsider_gets_404_everywhere(client, outsider, project, page):
    client.force_login(outsider)
    assert client.get(url(page, project)).status_code == 404


def test_an_sme_sees_only_their_projects(client, sme, project):
    from annotations.models import Project

    Project.objects.create(slug="other", name="Other project")
    client.force_login(sme)
    page = client.get(reverse("annotations:project_list")).content.decode()
    assert "Support copilot" in page and "Other project" not in page


def test_staff_see_every_project(client, staff, project):
    client.force_login(staff)
    assert client.get(url("review", project)).status_code == 200


def test_the_page_shows_the_first_queued_item_blind_to_the_judge(client, sme, project, queue):
    client.force_login(sme)
    page = client.get(url("review", project)).content.decode()
    assert "first answer" in page and "second answer" not in page
    assert "verdict" not in page.lower() and "rationale" not in page.lower()
    assert "Be exact about prices." in page  # the guidelines, one click away
    for reason in ("inaccurate", "incomplete", "policy", "tone"):
        assert f'value="{reason}"' in page


def test_an_htmx_decision_returns_only_the_card_with_the_next_item(client, sme, project, queue):
    client.force_login(sme)
    client.get(url("review", project))
    response = htmx_post(
        client,
        url("review_decide", project, queue[0].pk),
        {"decision": "reject", "reason": "tone", "comment": "curt", "corrected_response": "A kinder answer."},
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="review-card"') and "<html" not in body
    assert "second answer" in body and "1 of 3 reviews done" in body
    review = Review.objects.get()
    assert (review.item, review.reviewer, review.decision, review.reason) == (queue[0], sme, "reject", "tone")
    assert (review.comment, review.corrected_response) == ("curt", "A kinder answer.")
    assert review.seconds_spent is not None


def test_skip_and_undo_through_the_views(client, sme, project, queue):
    client.force_login(sme)
    client.get(url("review", project))
    body = htmx_post(client, url("review_skip", project, queue[0].pk)).content.decode()
    assert "second answer" in body
    htmx_post(client, url("review_decide", project, queue[1].pk), {"decision": "accept"})
    body = htmx_post(client, url("review_undo", project)).content.decode()
    assert "second answer" in body and not Review.objects.exists()
    body = htmx_post(client, url("review_undo", project)).content.decode()
    assert "nothing to undo" in body


def test_a_bad_decision_is_refused_and_nothing_is_stored(client, sme, project, queue):
    client.force_login(sme)
    path = url("review_decide", project, queue[0].pk)
    assert client.post(path, {"decision": "maybe"}).status_code == 400
    assert client.post(path, {"decision": "reject", "reason": "vibes"}).status_code == 400
    response = htmx_post(client, path, {"decision": "maybe"})  # the card says why; review.js swaps it in
    assert response.status_code == 400 and "decision must be accept or reject" in response.content.decode()
    assert not Review.objects.exists()


def leased_at(page: str) -> str:
    """The lease time the card sends back with a decision."""
    return re.search(r'name="leased_at" value="([^"]+)"', page).group(1)


def post(client, path, data, htmx: bool):
    return htmx_post(client, path, data) if htmx else client.post(path, data)


def expect_card(response, htmx: bool, message: str, showing: str) -> str:
    """A 409 with ``message`` on a working card that shows ``showing`` (the whole page, or the htmx partial)."""
    body = response.content.decode()
    assert response.status_code == 409
    assert ("<html" in body) is not htmx
    assert message in body and showing in body
    assert 'role="alert"' in body and '<form class="decide"' in body
    return body


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "page"])
def test_a_decision_from_another_tab_on_an_item_already_decided_is_a_409_on_the_current_item(
    client, sme, project, queue, htmx
):
    client.force_login(sme)
    tab_1 = client.get(url("review", project)).content.decode()
    tab_2 = client.get(url("review", project)).content.decode()
    assert "first answer" in tab_2 and leased_at(tab_2) == leased_at(tab_1)  # one lease, in both tabs
    path = url("review_decide", project, queue[0].pk)
    # Stored: the next card (htmx), or a redirect to the review screen (a plain form post).
    assert post(client, path, {"decision": "accept", "leased_at": leased_at(tab_1)}, htmx).status_code == (
        200 if htmx else 302
    )
    for action, data in [
        (path, {"decision": "reject", "reason": "tone"}),
        (url("review_skip", project, queue[0].pk), {}),
    ]:
        response = post(client, action, {**data, "leased_at": leased_at(tab_2)}, htmx)
        body = expect_card(
            response, htmx, "You already decided on r0 (accept), in another tab or window", "second answer"
        )
        assert "edit it under My reviews" in body
    assert list(Review.objects.values_list("item__external_id", "decision")) == [("r0", "accept")]
    assert not Skip.objects.exists()


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "page"])
def test_a_late_decision_after_the_lease_went_to_another_sme_is_a_409(client, sme, project, queue, htmx):
    bob = get_user_model().objects.create_user("bob")
    client.force_login(sme)
    card = client.get(url("review", project)).content.decode()
    ago = project.lease + timedelta(seconds=1)  # as if the lease's length had passed
    Slot.objects.filter(item=queue[0]).update(leased_at=F("leased_at") - ago, leased_until=F("leased_until") - ago)
    sent_back = (datetime.fromisoformat(leased_at(card)) - ago).isoformat()
    Slot.objects.exclude(item=queue[0]).update(done=True)
    assert sme_queue.next_item(project=project, reviewer=bob) == queue[0]
    Slot.objects.exclude(item=queue[0]).update(done=False)
    response = post(
        client, url("review_decide", project, queue[0].pk), {"decision": "accept", "leased_at": sent_back}, htmx
    )
    expect_card(response, htmx, "Your lease on r0 expired and another SME has it now", "second answer")
    assert not Review.objects.exists() and Slot.objects.get(item=queue[0]).reviewer == bob


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "page"])
def test_a_decision_or_skip_on_an_item_another_sme_has_is_a_409(client, sme, project, queue, htmx):
    bob = get_user_model().objects.create_user("bob")
    assert sme_queue.next_item(project=project, reviewer=bob) == queue[0]
    client.force_login(sme)
    for action, data in [
        (url("review_decide", project, queue[0].pk), {"decision": "accept"}),
        (url("review_skip", project, queue[0].pk), {"leased_at": "not a time"}),
        (url("review_skip", project, queue[0].pk), {"leased_at": "9999-12-31T23:59:59.999999+00:00"}),
        (url("review_decide", project, queue[0].pk), {"decision": "accept", "leased_at": "2001-01-01T00:00:00"}),
    ]:
        expect_card(post(client, action, data, htmx), htmx, "Another SME has r0", "second answer")
    assert not Review.objects.exists() and not Skip.objects.exists()


def test_an_outsider_cannot_post_a_decision(client, outsider, project, queue):
    client.force_login(outsider)
    assert client.post(url("review_decide", project, queue[0].pk), {"decision": "accept"}).status_code == 404
    assert not Review.objects.exists()


def test_untrusted_text_is_rendered_as_safe_markdown(client, sme, project):
    make_items(project, ['**bold** <script>alert(1)</script><img src=x onerror="alert(2)"> [x](javascript:alert(3))'])
    queue_all(project)
    client.force_login(sme)
    page = client.get(url("review", project)).content.decode()
    assert "<strong>bold</strong>" in page
    assert "<script>alert(1)" not in page and "<img src=x" not in page and 'href="javascript:' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_when_the_queue_is_empty_the_page_says_so(client, sme, project):
    client.force_login(sme)
    assert "Nothing left for you to review" in client.get(url("review", project)).content.decode()


def test_my_reviews_lists_and_edits_past_decisions(client, sme, project, queue):
    client.force_login(sme)
    client.get(url("review", project))
    client.post(url("review_decide", project, queue[0].pk), {"decision": "accept"})
    review = Review.objects.get()
    assert "first answer" in client.get(url("my_reviews", project)).content.decode()
    response = client.post(
        url("review_change", project, review.pk), {"decision": "reject", "reason": "incomplete", "comment": "missed"}
    )
    assert response.status_code == 302
    review.refresh_from_db()
    assert (review.decision, review.reason, review.comment) == ("reject", "incomplete", "missed")
    other = get_user_model().objects.create_user("other")
    Membership.objects.create(project=project, user=other)
    client.force_login(other)
    assert client.get(url("review_change", project, review.pk)).status_code == 404


def test_leads_adjudicate_disagreements_and_that_is_the_ground_truth(client, sme, project, queue):
    bob = get_user_model().objects.create_user("bob")
    lead = get_user_model().objects.create_user("lead")
    Membership.objects.create(project=project, user=lead, role=Membership.Role.LEAD)
    Review.objects.create(item=queue[0], reviewer=sme, decision="accept")
    Review.objects.create(item=queue[0], reviewer=bob, decision="reject", reason="tone")
    assert queue[0].pk not in ground_truth(project=project)
    client.force_login(sme)
    assert client.get(url("adjudication", project)).status_code == 403
    client.force_login(lead)
    page = client.get(url("adjudication", project)).content.decode()
    assert "first answer" in page and "tone" in page
    response = client.post(url("adjudication", project), {"item": queue[0].pk, "decision": "reject", "reason": "x"})
    assert response.status_code == 302
    assert Adjudication.objects.get().decided_by == lead
    assert ground_truth(project=project)[queue[0].pk] == "reject"
    assert "No open disagreements" in client.get(url("adjudication", project)).content.decode()


def test_the_agreement_page(client, sme, project, queue):
    bob = get_user_model().objects.create_user("bob")
    for item, (a, b) in zip(queue, [("accept", "accept"), ("reject", "reject"), ("accept", "reject")], strict=True):
        Review.objects.create(item=item, reviewer=sme, decision=a, reason="tone" if a == "reject" else "")
        Review.objects.create(item=item, reviewer=bob, decision=b, reason="tone" if b == "reject" else "")
    client.force_login(sme)
    page = client.get(url("agreement", project)).content.decode()
    assert "3 items reviewed by two or more of 2 SMEs" in page
    assert "<svg" in page and "Cohen" in page and "Krippendorff" in page


@pytest.mark.parametrize(
    "posted",
    [{"item": "abc"}, {"item": ""}, {}, {"item": "1.5"}, {"item": "99999999999999999999999"}, {"item": "1\x00"}],
    ids=["letters", "blank", "missing", "decimal", "beyond-bigint", "nul"],
)
def test_it_refuses_an_adjudication_whose_item_id_is_not_a_number_with_400(client, project, queue, posted):
    lead = get_user_model().objects.create_user("lead")
    Membership.objects.create(project=project, user=lead, role=Membership.Role.LEAD)
    client.force_login(lead)
    response = client.post(url("adjudication", project), {**posted, "decision": "accept"})
    assert response.status_code == 400
    assert "item id" in response.content.decode()
    assert not Adjudication.objects.exists()


def test_an_adjudication_of_an_item_of_another_project_is_not_found(client, project, queue):
    from annotations.models import Project

    other = Project.objects.create(slug="other", name="Other")
    (foreign,) = make_items(other, ["elsewhere"])
    lead = get_user_model().objects.create_user("lead")
    Membership.objects.create(project=project, user=lead, role=Membership.Role.LEAD)
    client.force_login(lead)
    assert client.post(url("adjudication", project), {"item": foreign.pk, "decision": "accept"}).status_code == 404
    assert client.post(url("adjudication", project), {"item": 10**15, "decision": "accept"}).status_code == 404
    assert not Adjudication.objects.exists()


def test_a_plain_form_decision_redirects_to_the_review_screen(client, sme, project, queue):
    """Post/redirect/get: a reload after deciding must not post the decision again."""
    client.force_login(sme)
    client.get(url("review", project))
    response = client.post(url("review_decide", project, queue[0].pk), {"decision": "accept"})
    assert response.status_code == 302 and response["Location"] == url("review", project)
    assert "second answer" in client.get(response["Location"]).content.decode()
    response = client.post(url("review_skip", project, queue[1].pk))
    assert response.status_code == 302 and response["Location"] == url("review", project)


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "page"])
@pytest.mark.parametrize(
    "posted",
    [{}, {"reason": ""}, {"reason": "  "}, {"reason": "_other"}, {"reason": "_other", "reason_other": "   "}],
    ids=["no-reason", "blank", "spaces", "other-without-words", "other-blank-words"],
)
def test_a_reject_without_a_reason_is_refused_with_400_and_nothing_is_stored(client, sme, project, queue, htmx, posted):
    """No reason is pre-selected on the card, so the server must refuse a reasonless reject itself."""
    client.force_login(sme)
    page = client.get(url("review", project)).content.decode()
    assert "checked" not in page.split('<fieldset class="reasons">')[1].split("</fieldset>")[0]
    data = {"decision": "reject", "comment": "kept", **posted}
    response = post(client, url("review_decide", project, queue[0].pk), data, htmx)
    body = response.content.decode()
    assert response.status_code == 400
    assert "needs a reason" in body or "needs a few words" in body
    assert "first answer" in body and ">kept</textarea>" in body  # the same item, what was typed kept
    assert not Review.objects.exists() and not ReviewChange.objects.exists()
    assert not Slot.objects.filter(done=True).exists()


def test_an_other_reason_is_stored_in_the_sme_s_words(client, sme, project, queue):
    client.force_login(sme)
    client.get(url("review", project))
    response = htmx_post(
        client,
        url("review_decide", project, queue[0].pk),
        {"decision": "reject", "reason": "_other", "reason_other": "  cites a  retired policy "},
    )
    assert response.status_code == 200
    assert Review.objects.get().reason == "other: cites a retired policy"


def test_the_correction_box_starts_with_the_response_and_an_unchanged_one_is_not_stored(client, sme, project, queue):
    client.force_login(sme)
    page = client.get(url("review", project)).content.decode()
    assert re.search(r'<textarea name="corrected_response"[^>]*>first answer</textarea>', page)
    htmx_post(
        client,
        url("review_decide", project, queue[0].pk),
        {"decision": "accept", "corrected_response": "first answer\n"},
    )
    htmx_post(
        client,
        url("review_decide", project, queue[1].pk),
        {"decision": "reject", "reason": "tone", "corrected_response": "second answer, kinder"},
    )
    corrections = dict(Review.objects.values_list("item__external_id", "corrected_response"))
    assert corrections == {"r0": "", "r1": "second answer, kinder"}


def test_undo_goes_back_several_decisions_each_with_what_was_entered(client, sme, project, queue):
    """Three decisions, three undos: each item comes back, newest first, with its reason, comment and
    correction in the form; a fourth undo has nothing left; the session count follows."""
    client.force_login(sme)
    client.get(url("review", project))
    entered = [
        {"decision": "reject", "reason": "tone", "comment": "curt", "corrected_response": "A kinder first."},
        {"decision": "reject", "reason": "_other", "reason_other": "wrong product", "comment": "see KB-12"},
        {"decision": "accept", "comment": "fine"},
    ]
    for item, data in zip(queue, entered, strict=True):
        body = htmx_post(client, url("review_decide", project, item.pk), data).content.decode()
    assert "This session: <strong>3</strong> decisions" in body
    body = htmx_post(client, url("review_undo", project)).content.decode()
    assert "third answer" in body and ">fine</textarea>" in body
    assert "This session: <strong>2</strong> decisions" in body
    body = htmx_post(client, url("review_undo", project)).content.decode()
    assert "second answer" in body and ">see KB-12</textarea>" in body
    assert re.search(r'value="_other" checked', body) and 'value="wrong product"' in body
    body = htmx_post(client, url("review_undo", project)).content.decode()
    assert "first answer" in body and ">curt</textarea>" in body and ">A kinder first.</textarea>" in body
    assert re.search(r'value="tone" checked', body)
    assert not Review.objects.exists()
    response = htmx_post(client, url("review_undo", project))
    assert response.status_code == 400 and "nothing to undo" in response.content.decode()
    # Deciding again from the restored form stores the same as before.
    htmx_post(client, url("review_decide", project, queue[0].pk), entered[0])
    review = Review.objects.get()
    assert (review.reason, review.comment, review.corrected_response) == ("tone", "curt", "A kinder first.")


def test_an_edit_keeps_an_other_reason_and_refuses_a_reasonless_reject(client, sme, project, queue):
    client.force_login(sme)
    client.get(url("review", project))
    client.post(
        url("review_decide", project, queue[0].pk),
        {"decision": "reject", "reason": "_other", "reason_other": "outdated"},
    )
    review = Review.objects.get()
    page = client.get(url("review_change", project, review.pk)).content.decode()
    assert re.search(r'value="_other" checked', page) and 'value="outdated"' in page
    response = client.post(url("review_change", project, review.pk), {"decision": "reject", "reason": ""})
    assert response.status_code == 400 and "needs a reason" in response.content.decode()
    review.refresh_from_db()
    assert review.reason == "other: outdated"


def disagree(project, items, smes):
    """Two SMEs disagree on every item: the first accepts, the second rejects (reason "tone")."""
    for item in items:
        Review.objects.create(item=item, reviewer=smes[0], decision="accept")
        Review.objects.create(item=item, reviewer=smes[1], decision="reject", reason="tone")


def test_adjudication_is_one_item_at_a_time_filterable_and_goes_on_to_the_next(client, sme, project, lead):
    bob = get_user_model().objects.create_user("bob")
    items = make_items(project, ["alpha answer", "beta answer", "gamma answer"])
    project.items.update(task_type="refunds")
    project.items.filter(pk=items[1].pk).update(task_type="shipping")
    disagree(project, items, [sme, bob])
    client.force_login(lead)
    page = client.get(url("adjudication", project)).content.decode()
    assert "alpha answer" in page and "beta answer" not in page and "Disagreement <strong>1</strong> of 3" in page
    page = client.get(url("adjudication", project) + "?task_type=shipping").content.decode()
    assert "beta answer" in page and "alpha answer" not in page and "of 1 (filtered; 3 open in all)" in page
    page = client.get(url("adjudication", project) + "?q=GAMMA").content.decode()
    assert "gamma answer" in page and "Disagreement <strong>1</strong> of 1" in page
    page = client.get(url("adjudication", project) + "?q=nowhere").content.decode()
    assert "No open disagreement matches these filters" in page
    page = client.get(url("adjudication", project) + "?reviewer=bob&reject_reason=tone").content.decode()
    assert "Disagreement <strong>1</strong> of 3" in page
    page = client.get(url("adjudication", project) + f"?reject_reason=policy&item={items[1].pk}").content.decode()
    assert "No open disagreement matches these filters" in page
    page = client.get(url("adjudication", project) + f"?item={items[1].pk}").content.decode()
    assert "beta answer" in page and "Disagreement <strong>2</strong> of 3" in page
    response = client.post(
        url("adjudication", project),
        {"item": items[0].pk, "decision": "reject", "reason": "fee missing", "task_type": "refunds"},
    )
    assert response.status_code == 302 and response["Location"].endswith(f"?task_type=refunds&item={items[2].pk}")
    page = client.get(response["Location"]).content.decode()
    assert "gamma answer" in page and "Adjudicated r0: reject." in page
    assert Adjudication.objects.get().item == items[0] and Adjudication.objects.get().reason == "fee missing"


def test_adjudication_refuses_a_bad_decision_with_400_on_the_same_item(client, sme, project, lead):
    bob = get_user_model().objects.create_user("bob")
    items = make_items(project, ["alpha answer", "beta answer"])
    disagree(project, items, [sme, bob])
    client.force_login(lead)
    response = client.post(url("adjudication", project), {"item": items[1].pk, "decision": "maybe"})
    assert response.status_code == 400
    body = response.content.decode()
    assert "decision must be accept or reject" in body and "beta answer" in body
    assert not Adjudication.objects.exists()


def test_agreement_and_adjudication_flag_small_n_instead_of_a_bare_kappa(client, sme, project, lead):
    """The issue's case: two items, kappa -1.000; the headline is the warning, with n and the interval."""
    bob = get_user_model().objects.create_user("bob")
    items = make_items(project, ["alpha answer", "beta answer"])
    Review.objects.create(item=items[0], reviewer=sme, decision="accept")
    Review.objects.create(item=items[0], reviewer=bob, decision="reject", reason="tone")
    Review.objects.create(item=items[1], reviewer=sme, decision="reject", reason="tone")
    Review.objects.create(item=items[1], reviewer=bob, decision="accept")
    client.force_login(lead)
    for name in ("agreement", "adjudication"):
        page = client.get(url(name, project)).content.decode()
        kappa = page.split('id="cohen-kappa"')[1].split("</tr>")[0]
        assert "n=2: too few to mean anything" in kappa and "it reads -1.000" in kappa
        alpha = page.split('id="krippendorff-alpha"')[1].split("</tr>")[0]
        assert "n=2: too few to mean anything" in alpha


def test_the_agreement_page_shows_n_and_an_interval_for_every_figure(client, sme, project):
    bob = get_user_model().objects.create_user("bob")
    items = make_items(project, [f"answer {i}" for i in range(40)])
    for i, item in enumerate(items):
        a = "accept" if i % 2 else "reject"
        b = a if i % 5 else ("reject" if a == "accept" else "accept")
        for who, d in ((sme, a), (bob, b)):
            Review.objects.create(item=item, reviewer=who, decision=d, reason="tone" if d == "reject" else "")
    client.force_login(sme)
    page = client.get(url("agreement", project)).content.decode()
    for figure in ("cohen-kappa", "krippendorff-alpha"):
        row = page.split(f'id="{figure}"')[1].split("</tr>")[0]
        assert "95 % CI" in row and "n=40" in row and "too few" not in row
        assert re.search(r"95 % CI -?0\.\d{3} to 0\.\d{3}", row)
    assert page.count('<g class="whisker"') == 2  # each SME's bar with its Wilson interval
    assert page.count("(n=32)") == 2  # 8 of the 40 items are ties: no ground truth to agree with
