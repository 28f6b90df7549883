"""`python manage.py relay_outbox [--loop]`: send the dispatch outbox to the broker.

Run one ``--loop`` process beside the workers (docker-compose's ``relay`` service): it sends
work recorded while the broker was down, and work unanswered past its timeout (a broker restart
lost it, or its worker died), gives up what stays unanswered after its sends, and deletes
answered messages past their retention (``PAIRWISE_OUTBOX_RETENTION_DAYS``; at start, then
hourly). Several at once are safe: a message is never sent twice at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections

from annotation_app.services.outbox import backlog, prune, relay, uses_broker

logger = logging.getLogger(__name__)

PRUNE_INTERVAL_SECONDS = 3600


def describe(counts: dict[str, dict[str, int]]) -> str:
    return "; ".join(
        f"{kind}: {numbers['due']} due, {numbers['in_flight']} in flight"
        for kind, numbers in counts.items()
    )


def pruned(count: int) -> str:
    days = f"{settings.PAIRWISE_OUTBOX_RETENTION_DAYS:g}"
    return f"pruned {count} answered message(s) older than {days} days"


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
            if deleted := prune():
                self.stdout.write(pruned(deleted))
            return

        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        self.stdout.write(f"relaying the outbox every {interval:g} s (stop with Ctrl-C)")
        next_prune = time.monotonic()
        while not stopping.is_set():
            try:
                sent = relay()
                if sent:
                    logger.info("relayed %s message(s); now %s", sent, describe(backlog()))
                if time.monotonic() >= next_prune:
                    if deleted := prune():
                        logger.info(pruned(deleted))
                    next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
            except DatabaseError as error:  # the database is away: try again next time
                logger.warning("could not read the outbox: %s", error)
            finally:
                close_old_connections()  # drops a connection that failed, or is too old
            stopping.wait(interval)
