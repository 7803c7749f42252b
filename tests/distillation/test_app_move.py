"""Training sets moved from the judging app to the distillation app (distillation 0001, judging 0015) without a
change to the database: the same tables, the same bytes, the same permissions and history, the same task name.

The migration tests use Django's migration executor on the test database: migrated back to before the move,
a snapshot built there, then migrated forward (see also tests/judging/test_judge_endpoints_migration.py).
"""

import hashlib
import io

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from distillation.formats import FORMATS
from distillation.models import TrainingSet
from distillation.tasks import build_training_set
from distillation.training_sets import iter_file, training_set_build
from tests.distillation.test_training_sets import decide_items
from tests.migrating import migrate

BEFORE = [("judging", "0014_certification"), ("distillation", None)]
STATE_ONLY = [("distillation", "0001_initial"), ("judging", "0015_training_sets_move_to_distillation")]


@pytest.mark.parametrize(("app", "migration"), STATE_ONLY)
def test_the_moves_migrations_change_no_table(db, app, migration):
    out = io.StringIO()
    call_command("sqlmigrate", app, migration, stdout=out)
    sql = [line for line in out.getvalue().splitlines() if line.strip() and not line.startswith("--")]
    assert sql in ([], ["BEGIN;", "COMMIT;"]), out.getvalue()


def test_the_tables_keep_their_names(db):
    assert TrainingSet._meta.db_table == "judging_trainingset"
    assert TrainingSet.rows.rel.related_model._meta.db_table == "judging_trainingsetrow"
    tables = connection.introspection.table_names()
    assert {"judging_trainingset", "judging_trainingsetrow"} <= set(tables)
    # The move made no table of its own (distillation's later models, the teacher's, have theirs).
    assert not [t for t in tables if t.startswith("distillation_training")]


@pytest.fixture
def before_the_move(transactional_db):
    apps = migrate(BEFORE)
    yield apps
    migrate()  # leave the database as every other test expects it


def test_a_snapshot_downloads_the_same_bytes_with_its_permissions_and_history_after_the_move(
    before_the_move, project, client
):
    # Before: the judging app owns the tables (its historical models read them), and the content types.
    decide_items(project)
    built = training_set_build(
        training_set_id=TrainingSet.objects.create(project=project, format="chat", validation_fraction=0.5, seed=3).pk
    )
    assert built.status == TrainingSet.Status.READY and built.rows_train and built.rows_validation
    OldRow = before_the_move.get_model("judging", "TrainingSetRow")
    assert OldRow.objects.filter(training_set_id=built.pk).count() == built.rows_train + built.rows_validation
    before = b"".join(iter_file(built))
    assert hashlib.sha256(before).hexdigest() == built.sha256
    old_type = ContentType.objects.get(app_label="judging", model="trainingset")
    auditor = get_user_model().objects.create_user("auditor", password="auditor-pass-123", is_staff=True)
    auditor.user_permissions.add(Permission.objects.get(content_type=old_type, codename="view_trainingset"))
    entry = LogEntry.objects.create(
        user=auditor, content_type=old_type, object_id=str(built.pk), object_repr=str(built), action_flag=ADDITION
    )

    migrate()

    # After: the same set, downloaded over REST, gives the same bytes and sha256.
    client.force_login(get_user_model().objects.create_user("boss", password="boss-pass-123", is_staff=True))
    response = client.get(reverse("training-set-download", args=[project.slug, built.pk]))
    after = b"".join(response.streaming_content)
    assert after == before
    assert response["X-Larry-Sha256"] == hashlib.sha256(after).hexdigest() == built.sha256
    # Permissions and admin history follow the model to its new app.
    moved = ContentType.objects.get_for_model(TrainingSet)
    assert moved.pk == old_type.pk and moved.app_label == "distillation"
    assert not ContentType.objects.filter(app_label="judging", model__startswith="trainingset").exists()
    auditor = get_user_model().objects.get(pk=auditor.pk)  # a fresh permission cache
    assert auditor.has_perm("distillation.view_trainingset") and not auditor.has_perm("judging.view_trainingset")
    entry.refresh_from_db()
    assert entry.get_edited_object() == built


def test_messages_queued_under_the_tasks_old_name_still_build(project, django_capture_on_commit_callbacks):
    from larry_web.celery import app

    app.loader.import_default_modules()
    assert build_training_set.name == "judging.tasks.build_training_set"
    decide_items(project)
    training_set = TrainingSet.objects.create(project=project, format="alpaca")
    app.tasks["judging.tasks.build_training_set"].apply(args=[training_set.pk]).get()
    training_set.refresh_from_db()
    assert training_set.status == TrainingSet.Status.READY and training_set.rows_train > 0


def test_every_format_a_set_can_have_has_a_writer():
    assert set(FORMATS) == set(TrainingSet.Format.values)
