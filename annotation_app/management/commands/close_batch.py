from django.core.management.base import BaseCommand, CommandError

from annotation_app.errors import PairwiseError
from annotation_app.management.batches import batch_named, comparison_counts
from annotation_app.services.batches import close_batch


class Command(BaseCommand):
    help = (
        "Close a batch: its comparisons are no longer handed out and open leases can no longer "
        "be submitted. activate_batch reopens it."
    )

    def add_arguments(self, parser):
        parser.add_argument("batch", help="Batch name.")

    def handle(self, *args, batch: str, **options):
        try:
            target = close_batch(batch_named(batch))
        except PairwiseError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            self.style.SUCCESS(f"Closed {target.name!r}: {comparison_counts(target)}.")
        )
