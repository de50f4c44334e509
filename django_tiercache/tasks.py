"""The edge tier's Celery tasks, where Celery's ``autodiscover_tasks()`` looks for them.

The tasks live in :mod:`django_tiercache.edge.tasks`; their names (``django_tiercache.tasks.*``,
used in beat schedules) are unchanged.
"""

from django_tiercache.edge.tasks import deliver_outbox, redrive_outbox

__all__ = ["deliver_outbox", "redrive_outbox"]
