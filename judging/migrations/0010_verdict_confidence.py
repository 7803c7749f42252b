from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("judging", "0009_training_set_claim")]

    operations = [
        migrations.RenameField("verdict", "score", "confidence"),
        migrations.AlterField(
            model_name="verdict",
            name="confidence",
            field=models.FloatField(
                blank=True,
                help_text="The judge's raw P(accept): from the verdict token's log-probabilities for an LLM, the "
                "predicted probability for the local classifier; None when the reply carried none.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="verdict",
            name="confidence_calibrated",
            field=models.FloatField(
                blank=True,
                help_text="P(accept) after the run's recalibration map fit on SME labels (cross-fitted: an "
                "SME-labelled item's value comes from a map fit without its label); None until the run is calibrated.",
                null=True,
            ),
        ),
        migrations.AddField(
            model_name="judgerun",
            name="calibration",
            field=models.JSONField(
                blank=True, default=dict, help_text="The recalibration map fit on SME labels, and how it was fit."
            ),
        ),
    ]
