"""The project settings page: leads (not staff) add and remove members, create accounts, edit reasons and
guidelines; SMEs get 403, outsiders 404, the anonymous the login page; every change is logged."""

import logging

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from annotations.models import Membership, ProjectChange
from annotations.project_settings import SettingsError, member_add, member_remove


@pytest.fixture
def url(project):
    return reverse("judging:project_settings", args=[project.slug])


def test_smes_get_403_outsiders_404_the_anonymous_the_login_page(client, url, sme, outsider):
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.post(url, {"action": "add", "login": "sme", "role": "lead"}).status_code == 302
    client.force_login(sme)
    assert client.get(url).status_code == 403
    assert client.post(url, {"action": "add", "login": "sme", "role": "lead"}).status_code == 403
    client.force_login(outsider)
    assert client.get(url).status_code == 404
    assert client.post(url, {"action": "add", "login": "outsider", "role": "lead"}).status_code == 404
    assert Membership.objects.get(user=sme).role == "sme"
    assert not Membership.objects.filter(user=outsider).exists() and not ProjectChange.objects.exists()


def test_a_lead_without_staff_rights_sees_the_page_linked_from_the_project_page(client, lead, project, url):
    assert not lead.is_staff
    client.force_login(lead)
    assert f'href="{url}"' in client.get(reverse("judging:project_detail", args=[project.slug])).content.decode()
    page = client.get(url).content.decode()
    for text in ("Members", "Start a judge run", "Apply rules and re-gate", "choose the gating policy"):
        assert text in page, text
    assert reverse("judging:gating_policy", args=[project.slug]) in page


def test_posts_without_a_csrf_token_are_refused(lead, project, url):
    client = Client(enforce_csrf_checks=True)
    client.force_login(lead)
    response = client.post(url, {"action": "edit", "reject_reasons": "wrong", "guidelines": ""})
    assert response.status_code == 403
    project.refresh_from_db()
    assert project.reject_reasons == ["inaccurate", "incomplete", "policy", "tone"]


def test_a_lead_adds_an_existing_account_by_username_or_email_and_it_is_logged(client, lead, project, url, caplog):
    ana = get_user_model().objects.create_user("ana", email="Ana@Example.org")
    client.force_login(lead)
    with caplog.at_level(logging.INFO, logger="annotations.project_settings"):
        response = client.post(url, {"action": "add", "login": "ana@example.org", "role": "sme"}, follow=True)
    assert "ana is now SME." in response.content.decode()
    assert Membership.objects.get(project=project, user=ana).role == "sme"
    change = ProjectChange.objects.get()
    assert (change.action, change.changed_by, change.detail) == ("member_add", lead, {"member": "ana", "role": "sme"})
    assert "project support: member_add by user" in caplog.text
    # Adding a member again with another role changes the role, logged as such.
    client.post(url, {"action": "add", "login": "ana", "role": "lead"})
    assert Membership.objects.get(project=project, user=ana).role == "lead"
    assert ProjectChange.objects.first().detail == {"member": "ana", "before": "sme", "after": "lead"}


def test_an_unknown_account_is_said_and_nothing_changes(client, lead, project, url):
    client.force_login(lead)
    response = client.post(url, {"action": "add", "login": "<b>nobody</b>", "role": "sme"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "No active account" in page and "&lt;b&gt;nobody&lt;/b&gt;" in page and "<b>nobody" not in page
    assert project.memberships.count() == 2 and not ProjectChange.objects.exists()


def test_a_lead_creates_an_account_and_gets_a_set_password_link_that_works(client, lead, project, url):
    client.force_login(lead)
    response = client.post(url, {"action": "create", "username": "bea", "email": "bea@example.org", "role": "sme"})
    assert response.status_code == 200
    bea = get_user_model().objects.get(username="bea")
    assert bea.email == "bea@example.org" and not bea.has_usable_password() and not bea.is_staff
    assert Membership.objects.get(project=project, user=bea).role == "sme"
    assert ProjectChange.objects.get().action == "account_create"
    link = response.context["created"]["link"]
    assert link.startswith("http://testserver/set-password/") and link in response.content.decode()
    # Bea follows the link (Django redirects to a token-less URL kept in her session) and chooses a password.
    bea_client = Client()
    form = bea_client.get(link, follow=True)
    assert form.status_code == 200 and "new_password1" in form.content.decode()
    done = bea_client.post(
        form.redirect_chain[-1][0],
        {"new_password1": "a-long-new-pass-417", "new_password2": "a-long-new-pass-417"},
    )
    assert done.status_code == 302
    bea.refresh_from_db()
    assert bea.check_password("a-long-new-pass-417")
    assert Client().get(link, follow=True).context["validlink"] is False  # used once


def test_a_taken_username_or_bad_email_creates_nothing(client, lead, project, url):
    client.force_login(lead)
    for data in ({"username": "LEAD", "email": "x@example.org"}, {"username": "cy", "email": "not-an-email"}):
        response = client.post(url, {"action": "create", "role": "sme", **data})
        assert response.status_code == 400
    assert not get_user_model().objects.filter(username="cy").exists() and not ProjectChange.objects.exists()


def test_a_lead_removes_a_member_but_never_the_last_lead(client, sme, lead, project, url):
    client.force_login(lead)
    membership = Membership.objects.get(user=sme)
    client.post(url, {"action": "remove", "membership": membership.pk})
    assert not Membership.objects.filter(pk=membership.pk).exists()
    assert ProjectChange.objects.get().detail == {"member": "sme", "role": "sme"}
    mine = Membership.objects.get(user=lead)
    response = client.post(url, {"action": "remove", "membership": mine.pk}, follow=True)
    assert "only lead" in response.content.decode()
    assert Membership.objects.filter(pk=mine.pk).exists()
    with pytest.raises(SettingsError, match="only lead"):
        member_add(project=project, login="lead", role="sme", user=lead)
    with pytest.raises(SettingsError, match="No such member"):
        member_remove(project=project, membership_id=10**9, user=lead)


def test_a_member_of_another_project_cannot_be_removed_from_here(client, lead, project, url):
    from annotations.models import Project

    other = Project.objects.create(slug="other", name="Other")
    stranger = Membership.objects.create(project=other, user=get_user_model().objects.create_user("zed"))
    client.force_login(lead)
    client.post(url, {"action": "remove", "membership": stranger.pk})
    assert Membership.objects.filter(pk=stranger.pk).exists()


def test_a_lead_edits_reasons_and_guidelines_and_the_change_is_logged(client, lead, project, url):
    client.force_login(lead)
    data = {
        "action": "edit",
        "reject_reasons": " wrong price \r\n\r\nrude\r\n",
        "guidelines": "Quote <b>list</b> prices.",
    }
    response = client.post(url, data, follow=True)
    assert "Saved: reject reasons, guidelines." in response.content.decode()
    project.refresh_from_db()
    assert project.reject_reasons == ["wrong price", "rude"] and project.guidelines == "Quote <b>list</b> prices."
    change = ProjectChange.objects.get()
    assert change.detail["reject_reasons"] == {
        "before": ["inaccurate", "incomplete", "policy", "tone"],
        "after": ["wrong price", "rude"],
    }
    assert change.detail["guidelines"]["before"] == "Be exact about prices."
    page = client.get(url).content.decode()
    assert "Quote &lt;b&gt;list&lt;/b&gt; prices." in page and "<b>list</b>" not in page  # escaped, in form and log
    client.post(url, data)  # the same again: nothing changed, nothing logged
    assert ProjectChange.objects.count() == 1


def test_bad_reasons_are_refused_with_the_text_kept(client, lead, project, url):
    client.force_login(lead)
    response = client.post(url, {"action": "edit", "reject_reasons": "same\nsame", "guidelines": "kept"})
    assert response.status_code == 400
    page = response.content.decode()
    assert "reasons must be distinct" in page and "same\nsame</textarea>" in page
    ten = "\n".join(f"r{i}" for i in range(10))
    assert client.post(url, {"action": "edit", "reject_reasons": ten, "guidelines": ""}).status_code == 400
    project.refresh_from_db()
    assert project.reject_reasons == ["inaccurate", "incomplete", "policy", "tone"]
    assert not ProjectChange.objects.exists()


def test_an_unknown_action_or_a_bad_id_is_said(client, lead, url):
    client.force_login(lead)
    assert "Unknown action" in client.post(url, {"action": "explode"}, follow=True).content.decode()
    assert "is not a number" in client.post(url, {"action": "remove", "membership": "x"}, follow=True).content.decode()


def test_member_names_are_escaped(client, lead, project, url):
    evil = get_user_model().objects.create_user('<script>alert("x")</script>', email="e@example.org")
    Membership.objects.create(project=project, user=evil)
    client.force_login(lead)
    page = client.get(url).content.decode()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


# ------------------------------------------------------------------ a new set-password link


def test_a_double_click_on_create_account_says_you_just_created_it_and_offers_a_new_link(client, lead, project, url):
    client.force_login(lead)
    data = {"action": "create", "username": "dee", "email": "dee@example.org", "role": "sme"}
    first = client.post(url, data).context["created"]["link"]
    second = client.post(url, data)
    page = second.content.decode()
    assert second.status_code == 400 and "is taken" not in page and first not in page
    assert "was just created, by you" in page
    dee = Membership.objects.get(project=project, user__username="dee")
    assert f'name="membership" value="{dee.pk}"' in page and 'value="link"' in page
    again = client.post(url, {"action": "link", "membership": dee.pk})
    assert again.status_code == 200 and again.context["created"]["again"]
    link = again.context["created"]["link"]
    assert link in again.content.decode()  # (the same as the first within the same second: tokens are by time)
    change = ProjectChange.objects.first()
    assert (change.action, change.changed_by, change.account, change.detail) == (
        "link_issue",
        lead,
        dee.user,
        {"member": "dee"},
    )
    # The new link sets the password; afterwards no link is offered or issued for dee.
    dee_client = Client()
    form = dee_client.get(link, follow=True)
    dee_client.post(
        form.redirect_chain[-1][0], {"new_password1": "b-long-pass-5531", "new_password2": "b-long-pass-5531"}
    )
    dee.user.refresh_from_db()
    assert dee.user.check_password("b-long-pass-5531")
    assert 'aria-label="Issue dee a new link to choose a password"' not in client.get(url).content.decode()
    refused = client.post(url, {"action": "link", "membership": dee.pk}, follow=True)
    assert "has chosen a password already" in refused.content.decode()
    assert ProjectChange.objects.filter(action="link_issue").count() == 1


def test_no_link_for_an_account_this_project_did_not_create(client, lead, sme, project, url):
    from annotations.models import Project
    from annotations.project_settings import account_create

    other = Project.objects.create(slug="other", name="Other")
    Membership.objects.create(project=other, user=lead, role="lead")
    # Accounts without a password: one made by hand, one made on another project's settings page, and one
    # made here but since given staff rights. A lead of this project gets a link for none of them.
    by_hand = get_user_model().objects.create_user("hand")
    elsewhere, _ = account_create(project=other, username="elsewhere", email="e@example.org", role="sme", user=lead)
    staffed, _ = account_create(project=project, username="staffed", email="s@example.org", role="sme", user=lead)
    get_user_model().objects.filter(pk=staffed.pk).update(is_staff=True)
    member_add(project=project, login="hand", role="sme", user=lead)
    member_add(project=project, login="elsewhere", role="sme", user=lead)
    client.force_login(lead)
    page = client.get(url).content.decode()
    assert "a new link to choose a password" not in page
    before = ProjectChange.objects.count()
    for account, reason in (
        (by_hand, "not created on this project"),
        (elsewhere, "not created on this project"),
        (staffed, "staff rights"),
    ):
        membership = Membership.objects.get(project=project, user=account)
        response = client.post(url, {"action": "link", "membership": membership.pk}, follow=True)
        assert reason in response.content.decode() and "set-password-link" not in response.content.decode()
    # A member of another project, by its membership id: not a member here.
    theirs = Membership.objects.get(project=other, user=elsewhere)
    assert (
        "No such member" in client.post(url, {"action": "link", "membership": theirs.pk}, follow=True).content.decode()
    )
    assert ProjectChange.objects.count() == before


def test_only_leads_issue_links_and_only_by_a_post_with_a_csrf_token(client, lead, sme, project, url):
    from annotations.project_settings import account_create

    new, _ = account_create(project=project, username="fay", email="f@example.org", role="sme", user=lead)
    membership = Membership.objects.get(user=new)
    client.force_login(sme)
    assert client.post(url, {"action": "link", "membership": membership.pk}).status_code == 403
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(lead)
    assert strict.post(url, {"action": "link", "membership": membership.pk}).status_code == 403
    client.force_login(lead)
    page = client.get(url).content.decode()  # a GET shows the button, issues nothing
    assert 'aria-label="Issue fay a new link to choose a password"' in page and "set-password-link" not in page
    assert not ProjectChange.objects.filter(action="link_issue").exists()


def test_a_lead_who_demotes_themselves_lands_on_the_project_with_a_message(client, lead, sme, project, url):
    client.force_login(lead)
    client.post(url, {"action": "add", "login": "sme", "role": "lead"})
    response = client.post(url, {"action": "add", "login": "lead", "role": "sme"}, follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == reverse("annotations:review", args=[project.slug])
    assert "no longer a lead" in response.content.decode()
    assert Membership.objects.get(user=lead).role == "sme"
    # Removed altogether (by the other lead's hand here), a lead who removes themselves lands on the project list.
    client.force_login(sme)
    client.post(url, {"action": "add", "login": "lead", "role": "lead"})
    client.force_login(lead)
    mine = Membership.objects.get(user=lead)
    response = client.post(url, {"action": "remove", "membership": mine.pk}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("annotations:project_list")
    assert "no longer a member" in response.content.decode()


# ------------------------------------------------------------------ the admin's members inline


def _admin_members_post(client, project, change):
    """Post the admin's project form with its members inline as drawn, after ``change(i, membership, data)``
    edits the inline's row ``i``; returns the response."""
    path = reverse("admin:annotations_project_change", args=[project.pk])
    form = client.get(path).context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data["reject_reasons"] = '["inaccurate", "incomplete", "policy", "tone"]'
    memberships = list(Membership.objects.filter(project=project).order_by("id"))
    data.update({"memberships-TOTAL_FORMS": str(len(memberships)), "memberships-INITIAL_FORMS": str(len(memberships)),
                 "memberships-MIN_NUM_FORMS": "0", "memberships-MAX_NUM_FORMS": "1000"})  # fmt: skip
    for i, m in enumerate(memberships):
        data.update({f"memberships-{i}-id": str(m.pk), f"memberships-{i}-project": str(project.pk),
                     f"memberships-{i}-user": str(m.user_id), f"memberships-{i}-role": m.role})  # fmt: skip
        change(i, m, data)
    return client.post(path, data)


def test_the_admin_cannot_delete_or_demote_the_only_lead(client, staff, lead, sme, project):
    from django.contrib.auth.models import Permission

    codenames = ["change_project", "view_project", "change_membership", "delete_membership", "view_membership"]
    staff.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(staff)

    def delete_lead(i, m, data):
        if m.user == lead:
            data[f"memberships-{i}-DELETE"] = "on"

    def demote_lead(i, m, data):
        if m.user == lead:
            data[f"memberships-{i}-role"] = "sme"

    def swap_roles(i, m, data):  # the lead becomes an SME and the SME the lead, in one save: allowed
        data[f"memberships-{i}-role"] = "sme" if m.user == lead else "lead"

    for refused in (delete_lead, demote_lead):
        response = _admin_members_post(client, project, refused)
        assert response.status_code == 200, refused.__name__  # the form again, with the error
        assert "lead is the only lead of the project: add another lead first" in response.content.decode()
        assert Membership.objects.get(user=lead).role == "lead" and not ProjectChange.objects.exists()
    assert _admin_members_post(client, project, swap_roles).status_code == 302
    assert Membership.objects.get(user=lead).role == "sme" and Membership.objects.get(user=sme).role == "lead"
