from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from annotation_app.errors import PairwiseError
from annotation_app.management.progress import ProgressBar
from annotation_app.models import Batch
from annotation_app.services.imports import FORMATS, import_comparisons


class Command(BaseCommand):
    help = (
        "Import prompts or comparisons into a batch, all or nothing. Formats: prompts (JSONL/CSV), "
        "canonical, trl, hh-rlhf; detected from the first record unless --format is given."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--batch", required=True, help="Batch name.")
        parser.add_argument("--format", choices=FORMATS, default=None)
        parser.add_argument(
            "--create",
            choices=["helpfulness", "safety"],
            default=None,
            help="Create the batch with this kind if it does not exist.",
        )

    def handle(
        self, *args, file: Path, batch: str, format: str | None, create: str | None, **options
    ):
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        # One transaction: a rejected file leaves no freshly created, empty batch behind.
        with transaction.atomic(), file.open("rb") as stream:
            try:
                target = Batch.objects.get(name=batch)
            except Batch.DoesNotExist:
                if create is None:
                    raise CommandError(
                        f"no batch named {batch!r}; create it first or pass --create KIND"
                    ) from None
                target = Batch.objects.create(name=batch, kind=create)
            bar = ProgressBar(self.stderr, total=file.stat().st_size, unit="bytes")
            try:
                report = import_comparisons(
                    target,
                    stream,
                    str(file),
                    format,
                    progress=lambda records: bar.update(stream.tell(), f"{records:,} records"),
                )
            except PairwiseError as error:
                raise CommandError(str(error)) from None
            finally:
                bar.close()
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {report.comparisons} comparisons from {report.records} records "
                f"({report.format}) into {target.name!r}; "
                f"{report.waiting_for_generation} wait for generation."
            )
        )
