from django.db import migrations


def load(apps, schema_editor):
    from opsportal.inventory.services import offerings_load

    offerings_load(offering_model=apps.get_model("inventory", "Offering"))


class Migration(migrations.Migration):
    """Reload the catalog now that offerings know local model files (adds SmolLM2)."""

    dependencies = [("inventory", "0004_offering_local_model_path")]

    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
