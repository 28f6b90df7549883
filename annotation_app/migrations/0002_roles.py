"""Create the annotator, batch admin and ML staff groups with their permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from annotation_app.roles import sync_role_groups


def create_role_groups(apps, schema_editor):
    # Permissions are normally created after all migrations ran; this migration needs them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    # Not strict: this table names models that later migrations add; the sync after the last
    # migration (annotation_app.apps) gives their permissions.
    sync_role_groups(
        apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"), strict=False
    )


def remove_role_groups(apps, schema_editor):
    from annotation_app.roles import Role

    apps.get_model("auth", "Group").objects.filter(name__in=[r.value for r in Role]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("annotation_app", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_role_groups, remove_role_groups)]
