from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.test.utils import override_settings

from annotation_app.services.demo import DEMO_PASSWORD, ensure_demo_policy, load_demo


class Command(BaseCommand):
    help = "Set up the demo (database, users, batches) and serve the platform."

    def add_arguments(self, parser):
        parser.add_argument("--addrport", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true", help="Only set up the data.")

    def handle(self, *args, addrport: str, no_serve: bool, **options):
        call_command("migrate", interactive=False, verbosity=0)
        policy, notice = ensure_demo_policy()
        # Served: generation runs in a background thread. Set up only: run it now, as the
        # process ends right after.
        with override_settings(PAIRWISE_EAGER_IN_THREAD=not no_serve):
            accounts = load_demo()
        url = f"http://{addrport}/"
        self.stdout.write(self.style.SUCCESS("\nPairwise demo is ready."))
        self.stdout.write(f"  Policy: {policy.name} ({policy.path})")
        if notice:
            self.stdout.write(self.style.WARNING(f"  {notice}"))
        self.stdout.write(f"  Open {url} and sign in as one of (password: {DEMO_PASSWORD}):")
        for account in accounts:
            self.stdout.write(f"    {account.username:<12} {account.role}")
        self.stdout.write(f"  Admin site: {url}admin/   API docs: {url}api/v1/docs/\n")
        if not no_serve:
            call_command("runserver", addrport, use_reloader=False)
