import shlex
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.test.utils import override_settings

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
            choices=Batch.Kind.values,
            default=None,
            help="Create the batch with this kind if it does not exist: a draft (annotators see "
            "it once activate_batch has opened it) with overlap 1 unless --overlap says otherwise.",
        )
        parser.add_argument(
            "--overlap",
            type=int,
            default=None,
            help="With --create: annotations wanted per comparison, each by another annotator.",
        )
        parser.add_argument(
            "--allow-duplicate",
            action="store_true",
            help="Import the file even if the same content was imported into the batch before "
            "(refused by default: its comparisons would be there twice).",
        )

    def handle(
        self,
        *args,
        file: Path,
        batch: str,
        format: str | None,
        create: str | None,
        overlap: int | None,
        allow_duplicate: bool,
        **options,
    ):
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        if overlap is not None and overlap < 1:
            raise CommandError(f"--overlap must be at least 1, not {overlap}")
        created = False
        # One transaction: a rejected file leaves no freshly created, empty batch behind.
        # Without a broker, generation runs in this process: inline, as the process ends next.
        # The override comes first: a `with` exits its items last to first, so the transaction
        # commits, and relays its work, while the override still holds.
        with (
            override_settings(PAIRWISE_EAGER_IN_THREAD=False),
            file.open("rb") as stream,
            transaction.atomic(),
        ):
            try:
                target = Batch.objects.get(name=batch)
            except Batch.DoesNotExist:
                if create is None:
                    raise CommandError(
                        f"no batch named {batch!r}; create it first or pass --create KIND"
                    ) from None
                target = Batch.objects.create(name=batch, kind=create, overlap=overlap or 1)
                created = True
            if overlap is not None and not created:
                raise CommandError(
                    f"--overlap applies to a batch that --create creates; {batch!r} exists "
                    f"(overlap {target.overlap}): change it in the admin or the API"
                )
            bar = ProgressBar(self.stderr, total=file.stat().st_size, unit="bytes")
            try:
                report = import_comparisons(
                    target,
                    stream,
                    str(file),
                    format,
                    progress=lambda records: bar.update(stream.tell(), f"{records:,} records"),
                    allow_duplicate=allow_duplicate,
                )
            except PairwiseError as error:
                raise CommandError(str(error)) from None
            finally:
                bar.close()
        if created:
            self.stdout.write(
                f"Created the batch {target.name!r}: {target.kind}, a draft, overlap "
                f"{target.overlap} (annotations wanted per comparison). Annotators see it once "
                f"it is active: python manage.py activate_batch {shlex.quote(target.name)} "
                "(set its guidelines and annotators in the admin first, if needed)."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {report.comparisons} comparisons from {report.records} records "
                f"({report.format}) into {target.name!r}; "
                f"{report.waiting_for_generation} wait for generation."
            )
        )
