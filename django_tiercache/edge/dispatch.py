"""How committed journal rows reach the edge tier: Celery, Django's tasks, inline, or a custom
``DISPATCHER``.

With ``PURGE_ASYNC`` (the default) the first that is configured delivers the rows:

1. Celery, when it is installed (``pip install django-tiercache[celery]``) and its current app
   has a ``broker_url`` or ``task_always_eager``. Celery's own default of a broker on
   ``amqp://localhost`` is never assumed.
2. Django's tasks framework (Django 6.0+), when ``TASKS[TIERCACHE["TASK_BACKEND"]]`` is a
   backend that runs tasks elsewhere: anything but Django's default ``ImmediateBackend``, which
   would run them in the committing process anyway (:mod:`.djangotasks`).
3. Otherwise synchronously, right after the commit, in the committing process, as with
   ``PURGE_ASYNC = False``.

:func:`connect` registers the edge tier with the orchestrator
(:class:`~django_tiercache.invalidation.JournalConsumer`); after each commit it calls
:func:`dispatch` with the ids of the rows written in that transaction.
"""

from __future__ import annotations

from collections.abc import Callable

from django.utils.module_loading import import_string

from django_tiercache import invalidation
from django_tiercache.conf import tiercache_settings
from django_tiercache.edge.outbox import deliver
from django_tiercache.redact import get_logger

logger = get_logger(__name__)

#: ``dispatcher(row_ids, using)``: hands committed rows to whatever delivers them.
Dispatcher = Callable[[list[int], str], None]


def connect() -> None:
    """Register the edge tier with the orchestrator: committed rows come to :func:`dispatch`."""
    invalidation.register_consumer(
        invalidation.JournalConsumer(
            name="edge", targets=lambda: list(tiercache_settings.PURGERS), dispatch=dispatch
        )
    )


def celery_configured() -> bool:
    """Whether Celery is installed and its current app has a broker (or runs tasks eagerly)."""
    try:
        from celery import current_app
    except ImportError:
        return False
    conf = current_app.conf
    return bool(conf.broker_url or conf.task_always_eager)


def django_tasks_configured() -> bool:
    """Whether Django's tasks framework exists (Django 6.0+) and ``TASKS`` has a backend for the
    alias ``TIERCACHE["TASK_BACKEND"]`` that is not the ``ImmediateBackend`` (which runs tasks in
    the caller, as the synchronous delivery does)."""
    try:
        from django.tasks import task_backends
        from django.tasks.backends.immediate import ImmediateBackend
        from django.tasks.exceptions import InvalidTaskBackend
    except ImportError:
        return False
    try:
        backend = task_backends[tiercache_settings.TASK_BACKEND]
    except InvalidTaskBackend:
        return False
    return not isinstance(backend, ImmediateBackend)


def _default_dispatcher() -> Dispatcher:
    """Celery, else Django's tasks, else inline (the order of the module docstring)."""
    if not tiercache_settings.PURGE_ASYNC:
        return deliver_quietly
    if celery_configured():
        from django_tiercache.edge.tasks import enqueue  # Celery is imported only when used

        return enqueue
    if django_tasks_configured():
        from django_tiercache.edge import djangotasks  # Django >= 6.0 only

        return djangotasks.enqueue
    return deliver_quietly


def dispatch(row_ids: list[int], using: str) -> None:
    """Hand committed rows to the edge tier; never raises (the rows stay pending on failure)."""
    path = tiercache_settings.DISPATCHER
    try:
        dispatcher: Dispatcher = import_string(path) if path else _default_dispatcher()
        dispatcher(list(row_ids), using)
    except Exception:
        logger.exception(
            "tiercache: could not dispatch purge request(s) %s; they stay pending for a redrive",
            row_ids,
        )


def deliver_quietly(row_ids: list[int], using: str) -> None:
    """:func:`~django_tiercache.edge.outbox.deliver`, logging instead of raising (inline)."""
    try:
        deliver(row_ids, using)
    except Exception:
        logger.exception("tiercache: delivering purge request(s) %s failed", row_ids)
