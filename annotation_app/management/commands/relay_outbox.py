"""`python manage.py relay_outbox [--loop]`: send the dispatch outbox to the broker.

Run one ``--loop`` process beside the workers (docker-compose's ``relay`` service): it sends
work recorded while the broker was down, and work unanswered past its timeout (a broker restart
lost it, or its worker died). Several at once are safe: a message is never sent twice at once.
"""

from __future__ import annotations

import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections

from annotation_app.services.outbox import backlog, relay, uses_broker

logger = logging.getLogger(__name__)


def describe(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        f"{kind}: {numbers['due']} due, {numbers['in_flight']} in flight"
        for kind, numbers in counts.items()
    )


class Command(BaseCommand):
    help = (
        "Send to the broker the work the outbox holds: recorded while the broker was down, or "
        "unanswered past its timeout. With --loop, keep doing it every "
        "PAIRWISE_RELAY_INTERVAL_SECONDS until stopped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Relay again and again.")
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="Seconds between passes with --loop (default: PAIRWISE_RELAY_INTERVAL_SECONDS).",
        )

    def handle(self, *args, loop: bool, interval: float | None, **options):
        if not uses_broker():
            raise CommandError(
                "no broker is configured (CELERY_BROKER_URL is empty): tasks run inside the "
                "web process, which relays its own work; there is nothing to relay from here"
            )
        interval = settings.PAIRWISE_RELAY_INTERVAL_SECONDS if interval is None else interval
        if interval <= 0:
            raise CommandError(f"--interval must be a positive number of seconds, not {interval}")
        if not loop:
            sent = relay()
            self.stdout.write(f"relayed {sent} message(s); now {describe(backlog())}")
            return

        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        self.stdout.write(f"relaying the outbox every {interval:g} s (stop with Ctrl-C)")
        while not stopping.is_set():
            try:
                sent = relay()
                if sent:
                    logger.info("relayed %s message(s); now %s", sent, describe(backlog()))
            except DatabaseError as error:  # the database is away: try again next time
                logger.warning("could not read the outbox: %s", error)
            finally:
                close_old_connections()  # drops a connection that failed, or is too old
            stopping.wait(interval)
