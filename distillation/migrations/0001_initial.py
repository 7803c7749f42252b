"""TrainingSet and TrainingSetRow move from judging to distillation: state only, tables kept."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    # The tables exist already: judging made them (0002 and later) and keeps them, under their names. Only
    # Django's state moves here; judging 0015 forgets them and moves their content types.
    dependencies = [
        ('judging', '0014_certification'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.SeparateDatabaseAndState(state_operations=[
        migrations.CreateModel(
            name='TrainingSet',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(blank=True, max_length=200)),
                ('format', models.CharField(choices=[('chat', 'OpenAI chat fine-tuning JSONL'), ('alpaca', 'Alpaca JSONL'), ('sharegpt', 'ShareGPT JSONL'), ('dpo', 'DPO preference pairs JSONL'), ('judge', 'Judge distillation JSONL'), ('csv', 'CSV')], default='chat', max_length=10)),
                ('system_prompt', models.TextField(blank=True, help_text='Written as the system turn of every row, when set.')),
                ('validation_fraction', models.FloatField(default=0, help_text='Share of rows held out for validation, 0 to 0.5.')),
                ('seed', models.IntegerField(default=0, help_text='Seeds the train/validation split and the DPO pairing.')),
                ('dedupe', models.BooleanField(default=True, help_text="Drop rows whose content repeats an earlier row's.")),
                ('filters', models.JSONField(blank=True, default=dict)),
                ('status', models.CharField(choices=[('building', 'Building'), ('ready', 'Ready'), ('failed', 'Failed')], default='building', max_length=8)),
                ('error', models.TextField(blank=True)),
                ('items_selected', models.PositiveIntegerField(default=0)),
                ('items_done', models.PositiveIntegerField(default=0, help_text='Progress of the build, out of items_selected.')),
                ('rows_train', models.PositiveIntegerField(default=0)),
                ('rows_validation', models.PositiveIntegerField(default=0)),
                ('duplicates', models.PositiveIntegerField(default=0)),
                ('unwritable', models.PositiveIntegerField(default=0)),
                ('report', models.JSONField(blank=True, default=dict, help_text='Every duplicate and unwritable item, with why.')),
                ('lineage', models.JSONField(blank=True, default=dict)),
                ('files', models.JSONField(blank=True, default=dict, help_text='Per split: rows, bytes and sha256.')),
                ('sha256', models.CharField(blank=True, max_length=64)),
                ('size_bytes', models.PositiveBigIntegerField(default=0)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('claimed_by', models.CharField(blank=True, help_text='The build attempt (host/pid/random) that last claimed the set.', max_length=200)),
                ('claimed_until', models.DateTimeField(blank=True, help_text="While building: the claim's lease, renewed as rows are written.", null=True)),
                ('created_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to=settings.AUTH_USER_MODEL)),
                ('project', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='training_sets', to='annotations.project')),
            ],
            options={
                'db_table': 'judging_trainingset',
                'ordering': ['-id'],
            },
        ),
        migrations.CreateModel(
            name='TrainingSetRow',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('split', models.CharField(choices=[('train', 'Train'), ('validation', 'Validation')], max_length=10)),
                ('content_sha256', models.CharField(help_text='Orders rows within a split and finds duplicates.', max_length=64)),
                ('external_id', models.CharField(max_length=255)),
                ('line', models.TextField()),
                ('item', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='annotations.item')),
                ('training_set', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='rows', to='distillation.trainingset')),
            ],
            options={
                'db_table': 'judging_trainingsetrow',
                'indexes': [models.Index(fields=['training_set', 'split', 'content_sha256'], name='training_row_in_order')],
            },
        ),
    ])]
