"""The Celery app of the worker process the edge integration tests start.

``celery -A tests.celery_worker worker`` with, in the environment:
``TIERCACHE_WORKER_BROKER_URL``, ``TIERCACHE_WORKER_QUEUE``, ``TIERCACHE_WORKER_DB_NAME`` (the
test database the test process uses) and ``TIERCACHE_WORKER_TIERCACHE`` (its ``TIERCACHE``, JSON).
"""

from __future__ import annotations

import json
import os

import django
from celery import Celery
from django.conf import settings

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
settings.DATABASES["default"]["NAME"] = os.environ["TIERCACHE_WORKER_DB_NAME"]
settings.TIERCACHE = json.loads(os.environ["TIERCACHE_WORKER_TIERCACHE"])
django.setup()

app = Celery("tiercache-worker")
app.conf.update(
    broker_url=os.environ["TIERCACHE_WORKER_BROKER_URL"],
    task_default_queue=os.environ["TIERCACHE_WORKER_QUEUE"],
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
    include=["django_tiercache.tasks"],
)
