"""The Celery app of the outbox load benchmark: its workers run ``celery -A
benchmarks.outbox_celery worker``; the benchmark process publishes through it."""

from __future__ import annotations

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.outbox_settings")
django.setup()

app = Celery("tiercache-outbox-bench")
app.conf.update(
    broker_url=os.environ.get("TIERCACHE_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    task_default_queue=os.environ.get("TIERCACHE_BENCH_QUEUE", "tiercache-outbox-bench"),
    worker_enable_remote_control=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    include=["django_tiercache.tasks"],
)
