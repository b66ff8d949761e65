import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    """The audit log moves from the jobs app to core, which every app may import. Only Django's
    idea of where the model lives changes: the table stays jobs_auditevent, with its rows."""

    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("inventory", "0008_azure_journeys"),
        ("jobs", "0003_azure_journeys"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="AuditEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("actor_label", models.CharField(max_length=200)),
                        ("action", models.CharField(db_index=True, max_length=60)),
                        ("object_type", models.CharField(max_length=40)),
                        ("object_label", models.CharField(max_length=300)),
                        (
                            "result",
                            models.CharField(
                                choices=[
                                    ("ok", "Succeeded"),
                                    ("failed", "Failed"),
                                    ("denied", "Denied"),
                                ],
                                default="ok",
                                max_length=10,
                            ),
                        ),
                        ("detail", models.TextField(blank=True)),
                        ("correlation_id", models.UUIDField(blank=True, db_index=True, null=True)),
                        (
                            "actor",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "endpoint",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                related_name="audit_events",
                                to="inventory.endpoint",
                            ),
                        ),
                        (
                            "job",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                to="jobs.job",
                            ),
                        ),
                        (
                            "workspace",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                to="inventory.workspace",
                            ),
                        ),
                    ],
                    options={"ordering": ["-at", "-id"], "db_table": "jobs_auditevent"},
                ),
            ],
            database_operations=[],
        ),
    ]
