from django.db import migrations


class Migration(migrations.Migration):
    """The audit log now lives in core (core.0001_audit_event): the table stays."""

    dependencies = [
        ("jobs", "0003_azure_journeys"),
        ("core", "0001_audit_event"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="AuditEvent")],
            database_operations=[],
        ),
    ]
