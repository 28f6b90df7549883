import os

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.test.utils import override_settings

from annotation_app.errors import Conflict
from annotation_app.services.demo import (
    DEMO_PASSWORD,
    ensure_demo_policy,
    load_demo,
    reset_demo,
)
from annotation_app.services.outbox import relay


class Command(BaseCommand):
    help = "Set up the demo (database, users, batches) and serve the platform."

    def add_arguments(self, parser):
        parser.add_argument("--addrport", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true", help="Only set up the data.")
        parser.add_argument(
            "--reset",
            action="store_true",
            help="Only delete the demo's data, so that the next start is a fresh one: its "
            "SQLite database, the tiny policy it built and its training runs' files in var/ "
            "(refused for any database but a SQLite file in var/).",
        )

    def handle(self, *args, addrport: str, no_serve: bool, reset: bool, **options):
        if reset:
            try:
                removed = reset_demo()
            except Conflict as error:
                raise CommandError(str(error)) from None
            for path in removed:
                self.stdout.write(f"  deleted {path}")
            self.stdout.write(
                self.style.SUCCESS(
                    "The demo is reset" if removed else "The demo had no data to delete"
                )
                + ": the next start sets it up afresh."
            )
            return
        # Model loading and saving bars of transformers (its hub setting, read when it loads)
        # would interleave with the banner and the server's log.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        call_command("migrate", interactive=False, verbosity=0)
        policy = ensure_demo_policy()
        # Served: generation runs in a background thread. Set up only: run it now, as the
        # process ends right after.
        with override_settings(PAIRWISE_EAGER_IN_THREAD=not no_serve):
            # Tasks an earlier demo process left unanswered died with it: run them again.
            relay(include_in_flight=True)
            accounts = load_demo()
        url = f"http://{addrport}/"
        self.stdout.write(self.style.SUCCESS("\nPairwise demo is ready."))
        self.stdout.write(f"  Policy: {policy.version.name} ({policy.version.path})")
        self.stdout.write(f"          current because: {policy.reason}")
        if policy.notice:
            self.stdout.write(self.style.WARNING(f"  {policy.notice}"))
        self.stdout.write(f"  Open {url} and sign in as one of (password: {DEMO_PASSWORD}):")
        for account in accounts:
            self.stdout.write(f"    {account.username:<12} {account.role}")
        self.stdout.write(f"  Admin site: {url}admin/   API docs: {url}api/v1/docs/")
        self.stdout.write("  Start afresh (delete the demo's data in var/): make demo-reset\n")
        if not no_serve:
            call_command("runserver", addrport, use_reloader=False)
