from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_migrate


def _sync_roles(sender, **kwargs) -> None:
    # Keeps the role groups in step with roles.py after every migrate (and after the test
    # runner's flushes, which re-create permissions but not groups).
    from django.contrib.auth.models import Group, Permission

    from annotation_app.roles import sync_role_groups

    sync_role_groups(Group, Permission)


def _sync_staff_flag(sender, instance, action, reverse, pk_set, **kwargs) -> None:
    if action not in {"post_add", "post_remove", "post_clear"}:
        return
    from django.contrib.auth import get_user_model

    from annotation_app.roles import sync_staff_flag

    users = get_user_model().objects.filter(pk__in=pk_set or []) if reverse else [instance]
    for user in users:
        sync_staff_flag(user)


class AnnotationAppConfig(AppConfig):
    name = "annotation_app"
    verbose_name = "Pairwise annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model

        # Every process knows every task by name (the platform sends them by name); in a web
        # process without a broker (the demo) they run here. Their bodies import torch lazily,
        # on the workers only.
        import annotation_app.tasks  # noqa: F401
        import model_worker.tasks  # noqa: F401
        from annotation_app import auth_cache

        post_migrate.connect(_sync_roles, sender=self)
        m2m_changed.connect(_sync_staff_flag, sender=get_user_model().groups.through)
        auth_cache.connect_signals()
