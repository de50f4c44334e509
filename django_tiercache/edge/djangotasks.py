"""The edge tier's tasks for Django's own tasks framework (``django.tasks``, Django 6.0+).

The dispatcher (:mod:`django_tiercache.edge.dispatch`) uses them when Celery is not configured
and ``TASKS[TIERCACHE["TASK_BACKEND"]]`` is a backend that runs tasks elsewhere (not Django's
``ImmediateBackend``). Like the Celery tasks, their arguments are outbox row ids only. Django's
framework has no retries: a delivery that leaves a purger unfinished keeps the rows ``pending``
with a backoff (``PurgeRequest.next_attempt``) and fails the task; :func:`redrive_outbox`, run
periodically by whatever schedules your tasks, delivers them again. Imported only on Django 6.
"""

from __future__ import annotations

from django.tasks import task

from django_tiercache.conf import tiercache_settings
from django_tiercache.edge import outbox

#: Most delivery tasks one run of :func:`redrive_outbox` enqueues.
REDRIVE_CHUNKS_PER_RUN = 20


class PurgeNotFinished(Exception):
    """Some purger still has keys to purge; the rows wait for the redrive."""


@task(backend=tiercache_settings.TASK_BACKEND)
def deliver_outbox(row_ids: list[int], using: str = "default", include_failed: bool = False) -> int:
    """Purge the keys of these outbox rows at every purger that has not purged them yet; the
    number of purgers called. Raises :class:`PurgeNotFinished` when one may succeed later (429,
    5xx, timeouts): the rows stay pending for :func:`redrive_outbox`. A refusal (400/401/403)
    marks the rows failed, for an operator."""
    outcome = outbox.deliver(row_ids, using, include_failed=include_failed)
    unfinished = [r.error or name for name, r in outcome.items() if not r.ok and r.retryable]
    if unfinished:
        raise PurgeNotFinished("; ".join(unfinished))
    return len(outcome)


@task(backend=tiercache_settings.TASK_BACKEND)
def redrive_outbox(
    older_than: float = 60, using: str = "default", include_failed: bool = False
) -> int:
    """Enqueue deliveries of the pending rows older than ``older_than`` seconds whose backoff has
    passed, in tasks of ``outbox.REDRIVE_CHUNK`` rows, at most ``REDRIVE_CHUNKS_PER_RUN`` tasks;
    the number of rows (see :func:`django_tiercache.tasks.redrive_outbox`, its Celery twin)."""
    chunks = outbox.redrive_chunks(
        older_than, using, include_failed=include_failed, chunks=REDRIVE_CHUNKS_PER_RUN
    )
    for chunk in chunks:
        deliver_outbox.using(backend=tiercache_settings.TASK_BACKEND).enqueue(
            chunk, using, include_failed=include_failed
        )
    return sum(map(len, chunks))


def enqueue(row_ids: list[int], using: str) -> None:
    """The dispatcher: one :func:`deliver_outbox` task per committed batch of rows, on the
    backend ``TIERCACHE["TASK_BACKEND"]`` names. Runs after the commit (the orchestrator calls it
    from ``on_commit``); a backend that raises leaves the rows pending for the redrive."""
    deliver_outbox.using(backend=tiercache_settings.TASK_BACKEND).enqueue(list(row_ids), using)
