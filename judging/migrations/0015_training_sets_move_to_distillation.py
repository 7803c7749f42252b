"""TrainingSet and TrainingSetRow moved to the distillation app (distillation 0001): judging forgets them, the
tables stay as they are (``db_table`` keeps their names), and their content types move with them, so that
permissions and admin history follow."""

from django.db import migrations

MOVED = ("trainingset", "trainingsetrow")


def _move_content_types(apps, schema_editor, source: str, target: str) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.using(schema_editor.connection.alias)
    for model in MOVED:
        if not types.filter(app_label=source, model=model).exists():
            continue  # a fresh database: post_migrate makes the target's
        # One made for the target app meanwhile (a migrate there and back) holds only the permissions Django
        # made for it; the source's carries the history.
        types.filter(app_label=target, model=model).delete()
        types.filter(app_label=source, model=model).update(app_label=target)
    ContentType.objects.clear_cache()


def forwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, "judging", "distillation")


def backwards(apps, schema_editor):
    _move_content_types(apps, schema_editor, "distillation", "judging")


class Migration(migrations.Migration):
    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("judging", "0014_certification"),
        ("distillation", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="trainingsetrow", name="training_set"),
                migrations.RemoveField(model_name="trainingsetrow", name="item"),
                migrations.DeleteModel(name="TrainingSet"),
                migrations.DeleteModel(name="TrainingSetRow"),
            ]
        ),
        migrations.RunPython(forwards, backwards),
    ]
