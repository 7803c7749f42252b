"""Data migrations of issue 14's fixes, run with Django's migration executor on the test database: rows written
with the historical models before the migration, then migrated forward.

- judging 0017: a rule's history with one version number recorded twice (two saves at once, before the rule
  was locked) is renumbered, nothing deleted, before the unique constraint is added.
- annotations 0011: earlier ``account_create`` log rows get the account they made, found by username and
  join time; an account renamed into that username since does not match.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.migrating import migrate

BEFORE = [("annotations", "0010_project_changes"), ("judging", "0016_items_list")]


@pytest.fixture
def before(transactional_db):
    apps = migrate(BEFORE)
    yield apps
    migrate()


def test_duplicate_rule_versions_are_renumbered_in_order_and_the_rule_and_its_hits_follow(before):
    Project = before.get_model("annotations", "Project")
    Item = before.get_model("annotations", "Item")
    LabelFunction = before.get_model("judging", "LabelFunction")
    Version = before.get_model("judging", "LabelFunctionVersion")
    RuleHit = before.get_model("judging", "RuleHit")
    project = Project.objects.create(slug="p", name="P")
    item = Item.objects.create(project=project, external_id="1", prompt="q", response="a")
    rule = LabelFunction.objects.create(project=project, name="r", kind="keywords", params={}, reason="r", version=3)
    clean = LabelFunction.objects.create(project=project, name="c", kind="keywords", params={}, reason="c", version=2)
    for number, words in [(1, ["a"]), (2, ["b"]), (2, ["c"]), (3, ["d"]), (3, ["e"])]:
        Version.objects.create(label_function=rule, project=project, version=number, action="update", after=words)
    for number in (1, 2):
        Version.objects.create(label_function=clean, project=project, version=number, action="update")
    Version.objects.create(label_function=None, project=project, version=2, action="delete")  # a deleted rule's
    Version.objects.create(label_function=None, project=project, version=2, action="delete")
    RuleHit.objects.create(label_function=rule, item=item, version=3)

    apps = migrate()
    Version = apps.get_model("judging", "LabelFunctionVersion")
    renumbered = list(Version.objects.filter(label_function_id=rule.pk).order_by("id").values_list("version", "after"))
    assert renumbered == [(1, ["a"]), (2, ["b"]), (3, ["c"]), (4, ["d"]), (5, ["e"])]
    assert list(
        Version.objects.filter(label_function_id=clean.pk).order_by("id").values_list("version", flat=True)
    ) == [1, 2]
    assert Version.objects.filter(label_function=None).count() == 2
    assert apps.get_model("judging", "LabelFunction").objects.get(pk=rule.pk).version == 5
    assert apps.get_model("judging", "RuleHit").objects.get().version == 5


def test_earlier_account_creations_name_their_account_but_not_a_renamed_one(before):
    Project = before.get_model("annotations", "Project")
    Change = before.get_model("annotations", "ProjectChange")
    User = before.get_model("auth", "User")
    project = Project.objects.create(slug="p", name="P")
    now = timezone.now()
    made = User.objects.create(username="made", date_joined=now - timedelta(seconds=1))
    # "old" was created here a year ago, then renamed; another account was renamed to "old" since.
    User.objects.create(username="old", date_joined=now - timedelta(days=30))
    for name in ("made", "old"):
        Change.objects.create(project=project, action="account_create", detail={"member": name, "role": "sme"})
    Change.objects.filter(detail__member="old").update(changed_at=now - timedelta(days=365))

    apps = migrate()
    Change = apps.get_model("annotations", "ProjectChange")
    assert Change.objects.get(detail__member="made").account_id == made.pk
    assert Change.objects.get(detail__member="old").account_id is None
