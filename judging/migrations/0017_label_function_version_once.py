from django.db import migrations, models


def renumber_duplicate_versions(apps, schema_editor):
    """Two saves of a rule at once could record one version number twice (before ``label_function_save``
    locked the rule). Renumber such a rule's history in the order it was written, each row at least one past
    the row before, so the unique constraint can be added; nothing is deleted. The rule's current version
    and its hits that carried it move to its last row's new number (the rule holds the last save's state)."""
    LabelFunction = apps.get_model("judging", "LabelFunction")
    LabelFunctionVersion = apps.get_model("judging", "LabelFunctionVersion")
    RuleHit = apps.get_model("judging", "RuleHit")
    duplicated = (
        LabelFunctionVersion.objects.filter(label_function__isnull=False)
        .order_by()  # the model's ordering would join the GROUP BY
        .values("label_function_id", "version")
        .annotate(n=models.Count("id"))
        .filter(n__gt=1)
        .values_list("label_function_id", flat=True)
        .distinct()
    )
    for rule in LabelFunction.objects.filter(pk__in=list(duplicated)):
        number = 0
        for row in LabelFunctionVersion.objects.filter(label_function=rule).order_by("changed_at", "id"):
            number = max(row.version, number + 1)
            if row.version != number:
                row.version = number
                row.save(update_fields=["version"])
        if number > rule.version:
            RuleHit.objects.filter(label_function=rule, version=rule.version).update(version=number)
            rule.version = number
            rule.save(update_fields=["version"])


class Migration(migrations.Migration):
    dependencies = [
        ("judging", "0016_items_list"),
    ]

    operations = [
        migrations.RunPython(renumber_duplicate_versions, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="labelfunctionversion",
            constraint=models.UniqueConstraint(fields=("label_function", "version"), name="label_function_version_once"),
        ),
    ]
