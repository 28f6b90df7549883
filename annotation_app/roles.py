"""The three roles of Pairwise as Django groups, and the permissions each one holds.

A data migration creates the groups; ``sync_roles`` re-applies this table, so changing a role
means changing this file and running ``python manage.py sync_roles``.
"""

from enum import StrEnum


class Role(StrEnum):
    ANNOTATOR = "annotator"
    BATCH_ADMIN = "batch_admin"
    ML_STAFF = "ml_staff"


def _crud(model: str, *actions: str) -> list[str]:
    return [f"{action}_{model}" for action in actions]


READ_DATA = [
    *_crud("batch", "view"),
    *_crud("conversation", "view"),
    *_crud("turn", "view"),
    *_crud("comparison", "view"),
    *_crud("response", "view"),
    *_crud("assignment", "view"),
    *_crud("annotation", "view"),
    *_crud("modelversion", "view"),
    *_crud("trainingrun", "view"),
    *_crud("outboxmessage", "view"),
    *_crud("importedfile", "view"),
]

# Codenames of permissions in the annotation_app app.
ROLE_PERMISSIONS: dict[Role, list[str]] = {
    Role.ANNOTATOR: ["annotate"],
    Role.BATCH_ADMIN: [
        *READ_DATA,
        "manage_batches",
        "export_preferences",
        *_crud("batch", "add", "change", "delete"),
        *_crud("conversation", "add", "change", "delete"),
        *_crud("turn", "add", "change", "delete"),
        *_crud("comparison", "add", "change", "delete"),
        *_crud("response", "add", "change", "delete"),
        *_crud("assignment", "change"),
    ],
    Role.ML_STAFF: [
        *READ_DATA,
        "export_preferences",
        *_crud("modelversion", "add", "change"),
        *_crud("trainingrun", "add", "change"),
    ],
}


def sync_role_groups(group_model, permission_model, *, strict: bool = True) -> None:
    """Create the role groups and give each exactly the permissions of ``ROLE_PERMISSIONS``.

    Takes the model classes so that a migration can pass its historical models. An early
    migration passes ``strict=False``: models added later have no permissions yet there, and
    the sync after every migrate (``apps.py``) gives them.
    """
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=role.value)
        permissions = list(
            permission_model.objects.filter(
                content_type__app_label="annotation_app", codename__in=codenames
            )
        )
        missing = set(codenames) - {permission.codename for permission in permissions}
        if missing and strict:
            raise RuntimeError(f"permissions missing for role {role}: {sorted(missing)}")
        group.permissions.set(permissions)


def user_roles(user) -> set[Role]:
    if not user.is_authenticated:
        return set()
    names = set(user.groups.values_list("name", flat=True))
    return {role for role in Role if role.value in names}


STAFF_ROLES = {Role.BATCH_ADMIN, Role.ML_STAFF}


def sync_staff_flag(user) -> None:
    """Batch admins and ML staff work in the Django admin: their role grants ``is_staff``.

    Losing the role takes the flag away again, except from superusers.
    """
    is_staff = user.is_superuser or bool(user_roles(user) & STAFF_ROLES)
    if user.is_staff != is_staff:
        user.is_staff = is_staff
        user.save(update_fields=["is_staff"])
