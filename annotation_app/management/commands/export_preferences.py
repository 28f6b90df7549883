import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation_app.models import Batch
from annotation_app.services.exports import EXPORT_FORMATS, export_lines
from rlhf.preferences import MARGIN_TABLES


class Command(BaseCommand):
    help = "Export preference data as JSON Lines: canonical (per annotation) or trl (training)."

    def add_arguments(self, parser):
        parser.add_argument("--format", choices=EXPORT_FORMATS, default="canonical")
        parser.add_argument("--out", type=Path, required=True, help="Output file, or - for stdout.")
        parser.add_argument(
            "--batch",
            action="append",
            default=[],
            help="Batch name (repeatable); all batches when omitted.",
        )
        parser.add_argument(
            "--margin",
            choices=sorted(MARGIN_TABLES),
            default="small",
            help="Margin table for the trl format (Llama 2: small or large).",
        )

    def handle(self, *args, format: str, out: Path, batch: list[str], margin: str, **options):
        batches = None
        if batch:
            batches = list(Batch.objects.filter(name__in=batch))
            missing = set(batch) - {b.name for b in batches}
            if missing:
                raise CommandError(f"no such batch: {', '.join(sorted(missing))}")
        to_stdout = str(out) == "-"
        if not to_stdout:
            out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".partial") if not to_stdout else None
        stream = sys.stdout if to_stdout else tmp.open("w", encoding="utf-8")
        count = 0
        try:
            for line in export_lines(format, batches, margin):
                stream.write(line)
                count += 1
                if not to_stdout and count % 1000 == 0:
                    self.stderr.write(f"\rexported {count} records", ending="")
        finally:
            if not to_stdout:
                stream.close()
        if tmp is not None:
            tmp.replace(out)  # a reader never sees a half-written export
        self.stderr.write(self.style.SUCCESS(f"\rexported {count} records ({format}) to {out}"))
