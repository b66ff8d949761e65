from django.db import migrations


def load(apps, schema_editor):
    from opsportal.inventory.services import offerings_load

    offerings_load(offering_model=apps.get_model("inventory", "Offering"))


class Migration(migrations.Migration):
    dependencies = [("inventory", "0001_initial")]

    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
