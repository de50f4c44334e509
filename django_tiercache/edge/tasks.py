"""Celery tasks of the edge tier: deliver outbox rows, and redrive the ones left behind.

Payloads are outbox row ids only, never keys or secrets. Tasks are ``acks_late``: a worker that
dies mid-purge leaves the message to be delivered again, and rows remember which purgers already
succeeded, so those are not called twice.

Beat schedule for the redrive (documented in docs/purgers.rst)::

    CELERY_BEAT_SCHEDULE = {
        "tiercache-redrive": {"task": "django_tiercache.tasks.redrive_outbox", "schedule": 60.0},
    }
"""

from __future__ import annotations

import os
import threading
from typing import Any

from celery import Celery, Task, shared_task
from celery.utils.time import get_exponential_backoff_interval
from kombu import Connection

from django_tiercache.conf import tiercache_settings
from django_tiercache.edge import outbox
from django_tiercache.redact import get_logger

logger = get_logger(__name__)

#: How the redrive task, in a worker, retries publishing the deliveries it enqueues.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2}
#: Retries of one delivery before its rows are left to the redrive.
MAX_RETRIES = 8
#: Exponential backoff of retries without a ``Retry-After``: 2, 4, 8… seconds (full jitter).
RETRY_BACKOFF = 2
RETRY_BACKOFF_MAX = 600
#: Most delivery tasks one run of ``redrive_outbox`` enqueues (each of ``outbox.REDRIVE_CHUNK``).
REDRIVE_CHUNKS_PER_RUN = 20


class PurgeNotFinished(Exception):
    """Some purger still has keys to purge and may succeed later."""


@shared_task(
    bind=True,
    name="django_tiercache.tasks.deliver_outbox",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=MAX_RETRIES,
)
def deliver_outbox(
    self: Task[Any, Any],
    row_ids: list[int],
    using: str = "default",
    backends: list[str] | None = None,
    include_failed: bool = False,
) -> None:
    """Purge the keys of these outbox rows at every purger that has not purged them yet.

    A purger that may succeed later is retried alone (``backends``): after the ``Retry-After``
    the API asked for (429), else after an exponential backoff with full jitter (5xx, timeouts,
    connection errors), at most ``MAX_RETRIES`` times; the rows then stay pending for a redrive.
    A refusal (400/401/403) is not retried: the row is marked failed with the API's message.
    """
    outcome = outbox.deliver(row_ids, using, backends=backends, include_failed=include_failed)
    unfinished = {name: r for name, r in outcome.items() if not r.ok and r.retryable}
    if not unfinished:
        return
    waits = [r.retry_after for r in unfinished.values() if r.retry_after is not None]
    countdown = (
        max(waits)
        if waits
        else get_exponential_backoff_interval(
            factor=RETRY_BACKOFF,
            retries=self.request.retries,
            maximum=RETRY_BACKOFF_MAX,
            full_jitter=True,
        )
    )
    error = PurgeNotFinished("; ".join(r.error for r in unfinished.values() if r.error))
    # The rows may have been marked failed by another purger's refusal: include them, so the
    # purgers worth retrying still get their keys.
    kwargs = {"backends": sorted(unfinished), "include_failed": True}
    raise self.retry(args=(row_ids, using), kwargs=kwargs, countdown=countdown, exc=error)


@shared_task(name="django_tiercache.tasks.redrive_outbox", ignore_result=True)
def redrive_outbox(
    older_than: float = 60, using: str = "default", include_failed: bool = False
) -> int:
    """Enqueue deliveries of the pending rows older than ``older_than`` seconds whose backoff has
    passed (``PurgeRequest.next_attempt``); the number of rows.

    One task per ``outbox.REDRIVE_CHUNK`` rows, at most ``REDRIVE_CHUNKS_PER_RUN`` tasks per run:
    a backlog drains over several runs, oldest first, each message small. The rows enqueued are
    left alone for ``outbox.REDRIVE_BACKOFF`` seconds so the next run does not enqueue them
    again. Failed rows (refused for good, e.g. a revoked token) are left to an operator unless
    ``include_failed``: resending them every minute would only repeat the refusal.
    """
    chunks = outbox.redrive_chunks(
        older_than, using, include_failed=include_failed, chunks=REDRIVE_CHUNKS_PER_RUN
    )
    for chunk in chunks:
        deliver_outbox.apply_async(
            (chunk, using),
            {"include_failed": include_failed},
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
        )
    return sum(map(len, chunks))


class _Publisher(threading.local):
    """This thread's broker connection for publishing from commit hooks (one per process)."""

    connection: Connection | None = None
    #: What the connection was opened for: process id, Celery app and broker URL.
    owner: tuple[int, int, str] | None = None

    @staticmethod
    def _owner(app: Celery) -> tuple[int, int, str]:
        return (os.getpid(), id(app), str(app.conf.broker_write_url or app.conf.broker_url))

    def kept(self, app: Celery) -> bool:
        """Whether this thread holds a connection opened earlier for ``app`` in this process."""
        return self.connection is not None and self.owner == self._owner(app)

    def get(self, app: Celery, timeout: float) -> Connection:
        """This thread's connection, connected within ``timeout`` seconds."""
        if self.connection is None or not self.kept(app):
            self.drop()
            self.connection = app.connection_for_write(connect_timeout=timeout, heartbeat=0)
            self.owner = self._owner(app)
        self.connection.ensure_connection(
            max_retries=1,
            interval_start=0,
            interval_step=0,
            timeout=timeout,  # type: ignore[arg-type]  # kombu takes seconds as a float
        )
        return self.connection

    def drop(self) -> None:
        if self.connection is not None and self.owner and self.owner[0] == os.getpid():
            self.connection.collect()  # maybe broken: release it without talking to the broker
        self.connection = self.owner = None


_publisher = _Publisher()


def enqueue(row_ids: list[int], using: str) -> None:
    """The ``PURGE_ASYNC`` dispatcher: one small task per committed batch of rows.

    It runs in the commit hook of the request that changed data, so the publish is bounded by
    ``TIERCACHE["PUBLISH_TIMEOUT"]`` (connection and handshake), over a connection kept per thread;
    a failure raises, and :func:`~django_tiercache.edge.outbox.dispatch` leaves the rows pending
    for the redrive. A kept connection that broke meanwhile is replaced once.
    """
    app = deliver_outbox.app
    if app.conf.task_always_eager:
        deliver_outbox.apply_async((row_ids, using))
        return
    timeout = float(tiercache_settings.PUBLISH_TIMEOUT)
    while True:
        kept = _publisher.kept(app)
        try:
            connection = _publisher.get(app, timeout)
            producer = connection.Producer()
            deliver_outbox.apply_async((row_ids, using), producer=producer, retry=False)
            return
        except Exception:
            _publisher.drop()
            if not kept:  # a fresh connection failed: the broker is unreachable or silent
                raise
