"""The whole edge tier for real: Django → outbox → broker → Celery worker process → Varnish.

Needs varnishd with the xkey vmod, a broker (RabbitMQ at 127.0.0.1:5672 by default, or
``TIERCACHE_TEST_BROKER_URL``, e.g. ``redis://127.0.0.1:6379/14``) and PostgreSQL
(``TIERCACHE_TEST_DATABASE=postgres``): the worker is another process and must see the test
database, which SQLite keeps in memory. Each is skipped with a reason when absent. The worker
consumes a queue of its own, deleted afterwards.

``TIERCACHE_LATENCY_SAMPLES`` (default 50) changes are timed from ``save()`` to the first fresh
answer from Varnish; p50/p99 are printed (``-s``) and written to ``TIERCACHE_LATENCY_REPORT``
when set (see benchmarks/purge_latency.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery, current_app
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.db import connection
from django.test import override_settings

from django_tiercache.edge.tasks import redrive_outbox
from django_tiercache.models import PurgeRequest
from tests.test_tasks import use_app
from tests.testapp.models import Category, Product
from tests.varnish_support import (
    REPO,
    TOKEN,
    Varnish,
    VarnishBinary,
    free_port,
    start_varnish,
    varnish_bin,
)

__all__ = ["varnish_bin"]  # fixture

pytestmark = [
    pytest.mark.varnish,
    pytest.mark.celery_worker,
    pytest.mark.postgres,  # the worker shares the test database
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.edge_urls"),
]

BROKER_URL = os.environ.get("TIERCACHE_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
SAMPLES = int(os.environ.get("TIERCACHE_LATENCY_SAMPLES", "50"))
DEADLINE = 30.0


@pytest.fixture(scope="module")
def shared_database(django_db_setup: None) -> str:
    """The test database's name, when another process can open it too."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "the Celery worker process must share the test database: "
            "run with TIERCACHE_TEST_DATABASE=postgres (SQLite's test database is in memory)"
        )
    return str(connection.settings_dict["NAME"])


@pytest.fixture(scope="module")
def broker() -> Iterator[tuple[str, str]]:
    """The broker URL and a queue name of this run's own; the queue is deleted afterwards."""
    from kombu import Connection

    try:
        with Connection(BROKER_URL, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.skip(f"no Celery broker at {BROKER_URL} ({type(exc).__name__})")
    queue = f"tiercache-it-{uuid.uuid4().hex[:12]}"
    yield BROKER_URL, queue
    with Connection(BROKER_URL, connect_timeout=2) as conn:
        channel = conn.default_channel
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
        client = getattr(channel, "client", None)  # Redis: kombu's routing keys of the queue
        if client is not None:
            client.delete(f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


@pytest.fixture(scope="module")
def django_server() -> Iterator[str]:
    """This process's Django served over HTTP from a thread (it sees the test database)."""
    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with override_settings(ALLOWED_HOSTS=["127.0.0.1"]):  # Varnish's start-up probe, too
        yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def varnish(varnish_bin: VarnishBinary, django_server: str) -> Iterator[Varnish]:
    """docs/varnish.vcl in front of :func:`django_server`."""
    with start_varnish(varnish_bin, int(django_server.rsplit(":", 1)[1])) as instance:
        yield instance


def tiercache_for(varnish: Varnish) -> dict[str, Any]:
    return {
        "PURGE_ASYNC": True,
        "PURGERS": {
            "varnish": {
                "BACKEND": "django_tiercache.purgers.varnish.VarnishPurger",
                "URLS": [varnish.url],
                "TOKEN": TOKEN,
            }
        },
    }


@pytest.fixture(scope="module")
def worker(
    shared_database: str, broker: tuple[str, str], varnish: Varnish, tmp_path_factory: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery worker --pool=solo`` in a subprocess, on this run's queue; always stopped."""
    url, queue = broker
    log = Path(tmp_path_factory.mktemp("worker"), "worker.log")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TIERCACHE_WORKER_BROKER_URL": url,
        "TIERCACHE_WORKER_QUEUE": queue,
        "TIERCACHE_WORKER_DB_NAME": shared_database,
        "TIERCACHE_WORKER_TIERCACHE": json.dumps(tiercache_for(varnish)),
    }
    command = [
        sys.executable, "-m", "celery", "-A", "tests.celery_worker", "worker",
        "--pool=solo", "--loglevel=INFO", "-Q", queue, "-n", f"{queue}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", f"--logfile={log}",
    ]  # fmt: skip
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + DEADLINE
        while "ready." not in (log.read_text() if log.exists() else ""):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def edge(
    settings: Any, worker: subprocess.Popen[bytes], broker: tuple[str, str], varnish: Varnish
) -> Iterator[Celery]:
    """This process publishes to the worker's queue, with the worker's purgers."""
    settings.TIERCACHE = {**settings.TIERCACHE, **tiercache_for(varnish)}
    url, queue = broker
    yield from use_app(broker_url=url, task_default_queue=queue)


def wait_for(predicate: Callable[[], bool]) -> float:
    """Poll ``predicate`` until it holds; the seconds it took."""
    start = time.perf_counter()
    while not predicate():
        assert time.perf_counter() - start < DEADLINE, "not fresh in time"
        time.sleep(0.002)
    return time.perf_counter() - start


def drain_outbox() -> None:
    """Wait until the worker has delivered every purge written so far."""
    wait_for(lambda: not PurgeRequest.objects.exclude(status=PurgeRequest.Status.DONE).exists())


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def test_save_then_the_next_request_through_varnish_is_fresh(
    edge: Celery, varnish: Varnish, django_server: str
) -> None:
    pen = Product.objects.create(name="v0", category=Category.objects.create(name="Pens"))
    path = f"/product/{pen.pk}/"
    drain_outbox()  # the creation's own purges must not land after Varnish caches the page
    origin = requests.get(django_server + path, timeout=5)
    assert f"testapp.product:{pen.pk}" in origin.headers["Surrogate-Key"].split()
    varnish.get(path)
    cached = varnish.get(path)
    assert (cached.headers["X-Cache"], cached.text) == ("HIT", "v0")

    pen.name = "v1"
    pen.save()
    row = PurgeRequest.objects.latest("pk")
    wait_for(lambda: PurgeRequest.objects.get(pk=row.pk).status == PurgeRequest.Status.DONE)
    fresh = varnish.get(path)
    assert (fresh.headers["X-Cache"], fresh.text) == ("MISS", "v1")

    latencies = []
    for i in range(2, SAMPLES + 2):
        varnish.get(path)
        assert varnish.get(path).headers["X-Cache"] == "HIT"
        pen.name = f"v{i}"
        start = time.perf_counter()
        pen.save()
        wait_for(lambda name=pen.name: varnish.get(path).text == name)
        latencies.append(time.perf_counter() - start)
    # The worker marks a row done after Varnish answered the purge: wait for the last one.
    drain_outbox()
    report = {
        "samples": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "broker": BROKER_URL.split("@")[-1],
    }
    print(f"\ncommit -> fresh at Varnish through a Celery worker: {report}")
    if os.environ.get("TIERCACHE_LATENCY_REPORT"):
        Path(os.environ["TIERCACHE_LATENCY_REPORT"]).write_text(json.dumps(report))


def test_broker_down_at_commit_then_the_redrive_delivers(
    edge: Celery, varnish: Varnish, broker: tuple[str, str]
) -> None:
    pen = Product.objects.create(name="before", category=Category.objects.create(name="Pens"))
    path = f"/product/{pen.pk}/"
    drain_outbox()
    varnish.get(path)
    assert varnish.get(path).headers["X-Cache"] == "HIT"

    working = current_app._get_current_object()
    for _ in use_app(broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//"):
        pen.name = "after"
        pen.save()  # the broker is down: no exception here
    row = PurgeRequest.objects.latest("pk")
    assert row.status == PurgeRequest.Status.PENDING
    assert varnish.get(path).text == "before"  # not purged yet, and not lost:

    assert current_app._get_current_object() is working  # the broker is back
    redrive_outbox.delay(older_than=0)  # what the beat schedule does every minute
    wait_for(lambda: PurgeRequest.objects.get(pk=row.pk).status == PurgeRequest.Status.DONE)
    assert varnish.get(path).text == "after"
