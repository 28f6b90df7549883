from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand

from annotation_app.roles import ROLE_PERMISSIONS, sync_role_groups


class Command(BaseCommand):
    help = "Re-apply the permissions of the annotator, batch admin and ML staff groups."

    def handle(self, *args, **options):
        sync_role_groups(Group, Permission)
        for role, codenames in ROLE_PERMISSIONS.items():
            self.stdout.write(f"{role}: {len(codenames)} permissions")
