"""Reviews and adjudications changed by staff in the admin: through the services, kept in history with who did it.

The history (ReviewChange) is append-only: no change and no delete, in the admin or the API; a user who
made a change cannot be deleted (deactivate them), so no row loses its author.
"""

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from annotations import queue
from annotations.models import Adjudication, Item, Review, ReviewChange, Slot
from annotations.services import adjudicate, review_edit, review_submit, review_undo
from judging.models import GateDecision
from tests.conftest import make_items, queue_all


@pytest.fixture
def root(db):
    return get_user_model().objects.create_superuser("root", password="root-pass-123")


@pytest.fixture
def admin_client(client, root):
    client.force_login(root)
    return client


@pytest.fixture
def reviewed(project, sme, django_capture_on_commit_callbacks) -> Review:
    """One queued item, accepted by the SME on the review screen (and gated)."""
    make_items(project, ["Paris is the capital of France."])
    queue_all(project)
    item = queue.next_item(project=project, reviewer=sme)
    with django_capture_on_commit_callbacks(execute=True):
        review = review_submit(item=item, reviewer=sme, decision="accept", comment="Right.")
    assert outcome(item) == "accept"
    return review


def outcome(item: Item) -> str | None:
    return GateDecision.objects.filter(item=item).values_list("outcome", flat=True).first()


def history(**filters) -> list[tuple]:
    rows = ReviewChange.objects.filter(**filters).order_by("id")
    return list(rows.values_list("action", "reviewer__username", "changed_by__username", "before", "after"))


def review_form(**fields) -> dict:
    return {"decision": "accept", "reason": "", "comment": "", "corrected_response": "", **fields}


def test_a_staff_edit_in_the_admin_is_kept_in_history_with_who_made_it_and_regates(
    admin_client, reviewed, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:annotations_review_change", args=[reviewed.pk]),
            review_form(decision="reject", reason="inaccurate", comment="Right."),
        )
    assert response.status_code == 302, response.content.decode()[:3000]
    reviewed.refresh_from_db()
    assert (reviewed.decision, reviewed.reason, reviewed.reviewer.username) == ("reject", "inaccurate", "sme")
    accepted = {"decision": "accept", "reason": "", "comment": "Right.", "corrected_response": ""}
    assert history(action="edit") == [("edit", "sme", "root", accepted, {**accepted, **reviewed.snapshot()})]
    assert outcome(reviewed.item) == "reject"  # re-gated, as after an SME's own edit


def test_a_bad_edit_in_the_admin_is_refused_with_the_reason_and_changes_nothing(admin_client, reviewed):
    response = admin_client.post(
        reverse("admin:annotations_review_change", args=[reviewed.pk]), review_form(decision="reject", reason="")
    )
    assert response.status_code == 200 and "a reject needs a reason" in response.content.decode()
    reviewed.refresh_from_db()
    assert reviewed.decision == "accept"
    assert [row[0] for row in history()] == ["create"]


def test_an_imported_label_edited_in_the_admin_is_kept_in_history(
    admin_client, project, django_capture_on_commit_callbacks
):
    (item,) = make_items(project, ["Lyon."])
    label = Review.objects.create(item=item, decision="accept", origin=Review.Origin.IMPORT)
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:annotations_review_change", args=[label.pk]), review_form(decision="reject", reason="tone")
        )
    assert response.status_code == 302
    assert [(a, r, c) for a, r, c, _, _ in history()] == [("edit", None, "root")]
    assert outcome(item) == "reject"


def test_deleting_a_review_in_the_admin_is_kept_in_history_and_the_item_goes_back_to_the_queue(
    admin_client, project, reviewed, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(reverse("admin:annotations_review_delete", args=[reviewed.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Review.objects.exists()
    assert history(action="delete") == [("delete", "sme", "root", reviewed.snapshot(), {})]
    assert outcome(reviewed.item) == "pending"
    other = get_user_model().objects.create_user("ann")
    assert queue.next_item(project=project, reviewer=other) == reviewed.item  # another SME may review it


def test_deleting_reviews_in_bulk_in_the_admin_records_each(
    admin_client, project, sme, django_capture_on_commit_callbacks
):
    items = make_items(project, ["a", "b", "c"])
    labels = [Review.objects.create(item=item, decision="accept", origin=Review.Origin.IMPORT) for item in items]
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            reverse("admin:annotations_review_changelist"),
            {"action": "delete_selected", "_selected_action": [r.pk for r in labels], "post": "yes"},
        )
    assert not Review.objects.exists()
    assert sorted(ReviewChange.objects.filter(action="delete").values_list("item_id", "changed_by__username")) == [
        (item.pk, "root") for item in items
    ]


def test_reviews_and_items_are_not_added_or_rewritten_in_the_admin(admin_client, reviewed):
    """A review comes from the review screen (or an import); an item's text is what the SMEs and the judge saw."""
    assert admin_client.get(reverse("admin:annotations_review_add")).status_code == 403
    assert admin_client.get(reverse("admin:annotations_item_add")).status_code == 403
    item = reviewed.item
    response = admin_client.post(
        reverse("admin:annotations_item_change", args=[item.pk]),
        {"project": item.project_id, "external_id": item.external_id, "prompt": "p", "response": "Rewritten."},
    )
    assert response.status_code == 403
    item.refresh_from_db()
    assert item.response == "Paris is the capital of France."
    page = admin_client.get(reverse("admin:annotations_item_change", args=[item.pk])).content.decode()
    assert 'id="review_changes-group"' in page  # the item's history, shown on its page


def test_review_history_cannot_be_changed_or_deleted_in_the_admin(admin_client, reviewed):
    change = ReviewChange.objects.get()
    before = list(ReviewChange.objects.values())
    assert admin_client.get(reverse("admin:annotations_reviewchange_change", args=[change.pk])).status_code == 200
    assert admin_client.post(reverse("admin:annotations_reviewchange_change", args=[change.pk]), {}).status_code == 403
    delete = reverse("admin:annotations_reviewchange_delete", args=[change.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    admin_client.post(
        reverse("admin:annotations_reviewchange_changelist"),
        {"action": "delete_selected", "_selected_action": [change.pk], "post": "yes"},
    )
    assert list(ReviewChange.objects.values()) == before


def test_an_smes_own_changes_name_the_sme_as_who_made_them(project, sme, reviewed):
    edited = review_edit(review=reviewed, reviewer=sme, decision="reject", reason="tone")
    review_undo(review=edited, reviewer=sme)
    assert [(a, r, c) for a, r, c, _, _ in history()] == [
        ("create", "sme", "sme"),
        ("edit", "sme", "sme"),
        ("undo", "sme", "sme"),
    ]


def test_adjudications_are_kept_in_history_and_staff_change_them_through_the_service(
    admin_client, project, lead, reviewed, django_capture_on_commit_callbacks
):
    item = reviewed.item
    with django_capture_on_commit_callbacks(execute=True):
        adjudicate(item=item, lead=lead, decision="reject", reason="outdated")
    assert outcome(item) == "reject"
    adjudication = Adjudication.objects.get()
    change = reverse("admin:annotations_adjudication_change", args=[adjudication.pk])
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(change, {"decision": "accept", "reason": "checked again"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert outcome(item) == "accept"
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            reverse("admin:annotations_adjudication_delete", args=[adjudication.pk]), {"post": "yes"}
        )
    assert response.status_code == 302
    assert not Adjudication.objects.exists()
    assert outcome(item) == "accept"  # the SME's review is the ground truth again
    rejected, accepted = {"decision": "reject", "reason": "outdated"}, {"decision": "accept", "reason": "checked again"}
    assert history(item=item, action__in=["adjudicate", "unadjudicate"]) == [
        ("adjudicate", "lead", "lead", {}, rejected),
        ("adjudicate", "root", "root", rejected, accepted),
        ("unadjudicate", "root", "root", accepted, {}),
    ]
    assert admin_client.get(reverse("admin:annotations_adjudication_add")).status_code == 403


def test_a_user_with_history_is_not_deleted_but_may_be_deactivated(admin_client, sme, reviewed):
    """Deleting the user would leave history without its author; the admin refuses and names what protects it."""
    response = admin_client.post(reverse("admin:auth_user_delete", args=[sme.pk]), {"post": "yes"})
    assert response.status_code == 200 and "Cannot delete user" in response.content.decode()
    assert history() == [("create", "sme", "sme", {}, reviewed.snapshot())]
    sme.is_active = False
    sme.save()
    assert Review.objects.get().reviewer == sme


def test_an_import_with_no_history_leaves_slots_consistent_after_a_staff_delete(
    admin_client, project, django_capture_on_commit_callbacks
):
    """An imported label closes one of its queued item's slots; deleting the label opens it again."""
    from annotations.services import prior_labels_import

    (item,) = make_items(project, ["Paris."])
    queue_all(project)
    prior_labels_import(project=project, labels={item.external_id: "accept"})
    assert not Slot.objects.filter(item=item, done=False).exists()
    label = Review.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(reverse("admin:annotations_review_delete", args=[label.pk]), {"post": "yes"})
    assert Slot.objects.filter(item=item, done=False).count() == 1


def test_an_imports_record_cannot_be_deleted_in_the_admin(admin_client, project, root):
    """It names who uploaded the file whose prior labels became ground truth."""
    from annotations.models import ImportJob

    job = ImportJob.objects.create(project=project, filename="labels.jsonl", format="jsonl", created_by=root)
    response = admin_client.post(reverse("admin:annotations_importjob_delete", args=[job.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert ImportJob.objects.filter(pk=job.pk).exists()
