from django.core.management.base import BaseCommand, CommandError

from annotation_app.errors import PairwiseError
from annotation_app.models import ModelVersion
from annotation_app.services.registry import (
    AlreadyRegistered,
    inspect_model,
    promote,
    register_model,
)


class Command(BaseCommand):
    help = (
        "Register a Hugging Face model directory (or hub id) as a model version. A path already "
        "registered with the role is refused (with --current, that version is made current)."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", help="Model directory (save_pretrained output) or hub id.")
        parser.add_argument("--role", required=True, choices=ModelVersion.Role.values)
        parser.add_argument("--name", help="Unique name; default: ROLE:DIRECTORY.")
        parser.add_argument("--parent", help="Name of the version this one derives from.")
        parser.add_argument(
            "--current",
            action="store_true",
            help="Make it current for its role (also an already registered version).",
        )

    def handle(self, *args, path, role, name, parent, current, **options):
        parent_version = None
        if parent:
            parent_version = ModelVersion.objects.filter(name=parent).first()
            if parent_version is None:
                raise CommandError(f"no model version named {parent!r}")
        try:
            version = register_model(
                path, role, name=name, parent=parent_version, make_current=current
            )
        except AlreadyRegistered as error:
            if not current:
                hint = "" if error.version.is_current else " (to promote it, add --current)"
                raise CommandError(f"{error}{hint}") from None
            self._promote_existing(error.version)
            return
        except PairwiseError as error:
            raise CommandError(str(error)) from None
        summary = inspect_model(version)
        count = summary["parameter_count"]
        self.stdout.write(
            self.style.SUCCESS(
                f"Registered {version.name} ({role}{', current' if current else ''}) at "
                f"{version.path}" + (f": {count:,} parameters" if count else "")
            )
        )

    def _promote_existing(self, version: ModelVersion) -> None:
        """--current on a registered path: promote that version, register nothing new."""
        if version.is_current:
            message = f"{version.name} ({version.role}) at {version.path} is already current"
        else:
            promote(version)
            message = (
                f"{version.path} was already registered as {version.name}; it is now the "
                f"current {version.role}"
            )
        self.stdout.write(self.style.SUCCESS(message + "; nothing new was registered."))
