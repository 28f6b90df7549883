from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _sync_roles(sender, **kwargs) -> None:
    # Keeps the role groups in step with roles.py after every migrate (and after the test
    # runner's flushes, which re-create permissions but not groups).
    from django.contrib.auth.models import Group, Permission

    from annotation_app.roles import sync_role_groups

    sync_role_groups(Group, Permission)


class AnnotationAppConfig(AppConfig):
    name = "annotation_app"
    verbose_name = "Pairwise annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_sync_roles, sender=self)
