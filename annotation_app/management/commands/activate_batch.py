from django.core.management.base import BaseCommand, CommandError
from django.test.utils import override_settings

from annotation_app.errors import PairwiseError
from annotation_app.management.batches import batch_named, comparison_counts
from annotation_app.services.batches import activate_batch


class Command(BaseCommand):
    help = (
        "Open a draft (or closed) batch to its annotators. Its prompts without responses go to "
        "the model workers."
    )

    def add_arguments(self, parser):
        parser.add_argument("batch", help="Batch name.")

    def handle(self, *args, batch: str, **options):
        target = batch_named(batch)
        # Without a broker, generation runs in this process: inline, as the process ends next.
        with override_settings(PAIRWISE_EAGER_IN_THREAD=False):
            try:
                target = activate_batch(target)
            except PairwiseError as error:
                raise CommandError(str(error)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Activated {target.name!r} ({target.kind}, overlap {target.overlap}): "
                f"{comparison_counts(target)}."
            )
        )
