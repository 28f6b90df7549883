import os
import signal
import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation_app.management.progress import ProgressBar
from annotation_app.models import Batch
from annotation_app.services.exports import (
    EXPORT_FORMATS,
    annotations_to_export,
    export_lines,
    reference_only_comparisons,
)
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
        parser.add_argument(
            "--include-reference",
            action="store_true",
            help="trl only: also export the imported comparisons no one annotated, as unrated "
            "pairs (margin 0) with their reference preference, as training runs do.",
        )

    def handle(
        self,
        *args,
        format: str,
        out: Path,
        batch: list[str],
        margin: str,
        include_reference: bool,
        **options,
    ):
        if include_reference and format != "trl":
            raise CommandError(
                "--include-reference needs --format trl (canonical is one line per annotation)"
            )
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
        skipped = []
        # Drawn on a terminal only, on stderr: never in a file, never in the export itself.
        bar = ProgressBar(self.stderr, total=_expected_records(batches, include_reference))

        def report_skipped(row) -> None:  # a damaged comparison, left out: say which and why
            skipped.append(row)
            bar.close()
            self.stderr.write(self.style.WARNING(f"skipped {row}"))

        lines = export_lines(
            format,
            batches,
            margin,
            include_reference_preferences=include_reference,
            on_skipped=report_skipped,
        )
        try:
            for line in lines:
                stream.write(line)
                count += 1
                bar.update(count, f"{count:,} records")
            stream.flush()
        except BrokenPipeError:
            _exit_quietly_on_a_closed_pipe()
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
            if not to_stdout:
                stream.close()
        if tmp is not None:
            tmp.replace(out)  # a reader never sees a half-written export
        self.stderr.write(self.style.SUCCESS(f"exported {count} records ({format}) to {out}"))
        if count == 0 and not skipped:  # (damaged rows are reported below)
            why = _why_nothing(format, batches, batch, include_reference)
            self.stderr.write(self.style.WARNING(why))
        if skipped:
            lost = sum(row.lines for row in skipped)
            self.stderr.write(
                self.style.WARNING(
                    f"left out {len(skipped)} damaged comparisons ({lost} records), listed above"
                )
            )


def _expected_records(batches: list[Batch] | None, include_reference: bool) -> int:
    """About how many lines the export has (the trl format drops a few): the bar's total."""
    total = annotations_to_export(batches).count()
    if include_reference:
        total += reference_only_comparisons(batches).count()
    return total


def _why_nothing(
    export_format: str, batches: list[Batch] | None, names: list[str], include_reference: bool
) -> str:
    """Why an export is empty, and what would export something."""
    if not names:
        where = "any batch"
    else:
        where = f"the batch{'es' if len(names) > 1 else ''} {', '.join(map(repr, names))}"
    annotations = annotations_to_export(batches).count()
    references = reference_only_comparisons(batches).count()
    if annotations:  # only the trl format drops annotations
        reason = (
            f"all {annotations:,} annotations in {where} are safety pairs whose chosen response "
            "is unsafe and the rejected one safe, which the trl export drops (Llama 2)"
        )
    else:
        reason = f"there are no annotations in {where} yet"
    if references and not include_reference:
        return (
            f"{reason}. {references:,} imported comparisons hold reference preferences: add "
            f"{'' if export_format == 'trl' else '--format trl '}--include-reference to export "
            "them as unrated pairs (margin 0), as training runs do."
        )
    if not references:
        reason += ", nor imported comparisons with a reference preference"
    return reason + "."


def _exit_quietly_on_a_closed_pipe() -> None:
    """The reader went away (``| head``): stop without a traceback, as Unix tools do.

    stdout is pointed at /dev/null so that Python's final flush cannot fail again; the status
    is the shell's for a process ended by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(128 + signal.SIGPIPE)
