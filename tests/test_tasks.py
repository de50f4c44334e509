"""The Celery edge tier end to end with mocked CDNs: batching, retries, refusals, broker outages."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from celery import Celery, current_app
from celery.signals import before_task_publish, task_retry
from django.conf import settings as django_settings
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from django_tiercache.edge.outbox import REDRIVE_BACKOFF_MAX
from django_tiercache.edge.purgers import locmem
from django_tiercache.edge.tasks import (
    MAX_RETRIES,
    RETRY_BACKOFF,
    RETRY_BACKOFF_MAX,
    redrive_outbox,
)
from django_tiercache.models import PurgeRequest
from tests.test_purgers_cloudflare import CLOUDFLARE, cloudflare_ok
from tests.test_purgers_cloudflare import TOKEN as CF_TOKEN
from tests.test_purgers_cloudflare import ZONE as CF_ZONE
from tests.test_purgers_fastly import FASTLY, fastly_ok
from tests.test_purgers_fastly import TOKEN as FASTLY_TOKEN
from tests.testapp.models import Category, Product
from tests.varnish_support import free_port

pytestmark = pytest.mark.django_db(transaction=True)

PURGERS = {
    "fastly": {
        "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
        "SERVICE_ID": "SU1Z0isxPaozGVKXdv0eY",
        "API_TOKEN": FASTLY_TOKEN,
    },
    "cloudflare": {
        "BACKEND": "django_tiercache.purgers.cloudflare.CloudflarePurger",
        "ZONE_ID": CF_ZONE,
        "API_TOKEN": CF_TOKEN,
    },
}


def use_app(**conf: Any) -> Iterator[Celery]:
    previous = current_app._get_current_object()
    app = Celery("tiercache-tests", set_as_current=True)
    app.conf.update(conf)
    yield app
    app.close()
    previous.set_current()


@pytest.fixture
def eager_celery() -> Iterator[Celery]:
    """A Celery app running tasks in-process (retries too, at once)."""
    yield from use_app(task_always_eager=True)


@pytest.fixture
def edge(settings: Any) -> None:
    """Fastly and Cloudflare configured, purged through Celery."""
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGE_ASYNC": True, "PURGERS": PURGERS}


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def retries() -> Iterator[list[Any]]:
    """The countdown (seconds) of every task retry, in order."""
    seen: list[Any] = []

    def receiver(reason: Any, **kwargs: Any) -> None:
        seen.append(reason.when)

    task_retry.connect(receiver)
    yield seen
    task_retry.disconnect(receiver)


def calls(api: responses.RequestsMock, host: str) -> int:
    return sum(host in (call.request.url or "") for call in api.calls)


def without_purgers() -> Any:
    """Settings under which a change writes no outbox row (for the tests' own fixtures)."""
    return override_settings(TIERCACHE={**django_settings.TIERCACHE, "PURGERS": {}})


@pytest.fixture
def category() -> Category:
    with without_purgers():
        return Category.objects.create(name="Pens")


def test_thousand_objects_in_one_transaction(
    edge: None, eager_celery: Celery, api: responses.RequestsMock, category: Category
) -> None:
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    with transaction.atomic():
        for i in range(1000):
            Product.objects.create(name=f"p{i}", category=category)
    keys = {key for row in PurgeRequest.objects.all() for key in row.keys}
    # 1,000 object keys, the category and supplier scopes, the table, the category
    assert len(keys) == 1004
    fastly, cloudflare = calls(api, "fastly"), calls(api, "cloudflare")
    assert fastly == math.ceil(len(keys) / 256) == 4
    assert cloudflare == math.ceil(len(keys) / 30) == 34
    assert set(PurgeRequest.objects.values_list("status", flat=True)) == {"done"}
    print(
        f"\n1,000 objects -> {fastly} Fastly calls, {cloudflare} Cloudflare calls (BATCH_SIZE 30)"
    )


@pytest.fixture
def pen(category: Category) -> Product:
    with without_purgers():
        return Product.objects.create(name="Blue", category=category)


def test_rate_limit_waits_retry_after_and_skips_the_purger_that_succeeded(
    edge: None, eager_celery: Celery, api: responses.RequestsMock, pen: Product, retries: list[Any]
) -> None:
    api.add(responses.POST, FASTLY, status=429, headers={"Retry-After": "7"})
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    pen.save()
    assert retries == [7.0]
    assert (calls(api, "fastly"), calls(api, "cloudflare")) == (2, 1)
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.DONE
    assert row.attempts == 2


def test_server_errors_back_off_with_jitter(
    edge: None, eager_celery: Celery, api: responses.RequestsMock, pen: Product, retries: list[Any]
) -> None:
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    api.add(responses.POST, CLOUDFLARE, status=503, body="unavailable")
    api.add(responses.POST, CLOUDFLARE, status=502, body="bad gateway")
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    pen.save()
    assert len(retries) == 2
    for attempt, countdown in enumerate(retries):
        assert 0 <= countdown <= min(RETRY_BACKOFF * 2**attempt, RETRY_BACKOFF_MAX)
    assert (calls(api, "fastly"), calls(api, "cloudflare")) == (1, 3)
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE


def test_a_refusal_fails_the_row_with_the_api_message_and_is_not_retried(
    edge: None, eager_celery: Celery, api: responses.RequestsMock, pen: Product, retries: list[Any]
) -> None:
    api.add(
        responses.POST,
        FASTLY,
        status=401,
        json={"msg": "Provided credentials are missing or invalid"},
    )
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    pen.save()
    assert retries == []
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.FAILED
    assert "Provided credentials are missing or invalid" in row.last_error
    assert row.results["cloudflare"]["ok"] is True
    assert FASTLY_TOKEN not in row.last_error


def test_a_refusal_does_not_stop_the_retries_of_another_purger(
    edge: None, eager_celery: Celery, api: responses.RequestsMock, pen: Product, retries: list[Any]
) -> None:
    api.add(responses.POST, FASTLY, status=403, json={"msg": "Forbidden"})
    api.add(responses.POST, CLOUDFLARE, status=500, body="oops")
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    pen.save()
    assert len(retries) == 1
    assert (calls(api, "fastly"), calls(api, "cloudflare")) == (1, 2)  # Fastly not asked again
    row = PurgeRequest.objects.get()
    assert row.results["cloudflare"]["ok"] is True
    assert row.status == PurgeRequest.Status.FAILED
    assert "Forbidden" in row.last_error


def test_attempts_are_bounded_then_the_redrive_delivers(
    edge: None, eager_celery: Celery, api: responses.RequestsMock, pen: Product, retries: list[Any]
) -> None:
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    down = api.add(responses.POST, CLOUDFLARE, status=503, body="unavailable")
    pen.save()
    assert len(retries) == MAX_RETRIES
    assert calls(api, "cloudflare") == MAX_RETRIES + 1
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING  # left for the redrive, not lost
    assert row.attempts == MAX_RETRIES + 1

    api.remove(down)
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    # The redrive backs off after failed deliveries: 60 s doubling per attempt, at most an hour.
    assert row.next_attempt == row.updated + timedelta(seconds=REDRIVE_BACKOFF_MAX)
    assert redrive_outbox.delay(older_than=0).get() == 0
    PurgeRequest.objects.update(next_attempt=timezone.now())  # the backoff has passed
    assert redrive_outbox.delay(older_than=0).get() == 1
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.DONE
    assert calls(api, "fastly") == 1


def test_failed_rows_wait_for_an_operator(
    edge: None, eager_celery: Celery, api: responses.RequestsMock, pen: Product
) -> None:
    refusal = api.add(responses.POST, FASTLY, status=401, json={"msg": "bad token"})
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    pen.save()
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.FAILED
    assert redrive_outbox.delay(older_than=0).get() == 0  # the periodic redrive leaves it
    assert calls(api, "fastly") == 1
    api.remove(refusal)  # the operator fixed the token, then redrives failed rows too
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    redrive_outbox.delay(older_than=0, include_failed=True)
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE
    assert calls(api, "cloudflare") == 1


@pytest.fixture
def broker_down() -> Iterator[Celery]:
    """A Celery app whose broker is a local port nothing listens on."""
    yield from use_app(
        broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//",
        broker_connection_timeout=1,
        broker_connection_retry_on_startup=False,
    )


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """Every task message Celery tried to publish: its body and headers."""
    messages: list[dict[str, Any]] = []

    def receiver(body: Any, headers: Any, **kwargs: Any) -> None:
        messages.append({"body": body, "headers": headers})

    before_task_publish.connect(receiver)
    yield messages
    before_task_publish.disconnect(receiver)


def test_broker_down_at_commit_loses_nothing(
    edge: None,
    api: responses.RequestsMock,
    category: Category,
    broker_down: Celery,
    caplog: Any,
) -> None:
    caplog.set_level(logging.INFO)
    with transaction.atomic():
        pen = Product.objects.create(name="Blue", category=category)
    pen.name = "Red"
    pen.save()  # no exception reaches the caller
    rows = list(PurgeRequest.objects.order_by("pk"))
    assert [row.status for row in rows] == [PurgeRequest.Status.PENDING] * len(rows)
    assert "stay pending for a redrive" in caplog.text
    assert len(api.calls) == 0
    for token in (FASTLY_TOKEN, CF_TOKEN):
        assert token not in caplog.text

    # The broker is back (tasks run in-process here): the periodic redrive delivers every row.
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    for _ in use_app(task_always_eager=True):
        assert redrive_outbox.delay(older_than=0).get() == len(rows)
    assert set(PurgeRequest.objects.values_list("status", flat=True)) == {"done"}
    purged = {
        tag
        for call in api.calls
        if "cloudflare" in (call.request.url or "")
        for tag in envelope_tags(call.request.body)
    }
    assert purged == {key for row in rows for key in row.keys}


def test_task_messages_carry_row_ids_only(
    edge: None, category: Category, published: list[dict[str, Any]]
) -> None:
    for _ in use_app(broker_url="memory://"):
        with transaction.atomic():
            Product.objects.create(name="Blue", category=category)
    assert len(published) == 1
    args, _, _ = published[0]["body"]
    assert args[0] == list(PurgeRequest.objects.values_list("pk", flat=True))
    for token in (FASTLY_TOKEN, CF_TOKEN):
        assert token not in repr(published[0])


def envelope_tags(body: Any) -> list[str]:
    return list(json.loads(body)["tags"])


def test_inline_purges_without_celery(
    settings: Any, api: responses.RequestsMock, pen: Product
) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGE_ASYNC": False, "PURGERS": PURGERS}
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    pen.save()
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE
    assert (calls(api, "fastly"), calls(api, "cloudflare")) == (1, 1)


@pytest.fixture
def silent_broker() -> Iterator[Celery]:
    """A Celery app whose broker accepts TCP connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        yield from use_app(broker_url=f"amqp://guest:guest@127.0.0.1:{port}//")
    finally:
        stop.set()
        thread.join()
        for sock in [*accepted, listener]:
            sock.close()


def test_a_silent_broker_delays_a_commit_by_the_publish_timeout_only(
    edge: None,
    settings: Any,
    api: responses.RequestsMock,
    category: Category,
    silent_broker: Celery,
    caplog: Any,
) -> None:
    """Celery's own connection timeout (4 s) and publish retries would hold every commit for
    seconds; PUBLISH_TIMEOUT bounds the publish, and the row waits for the redrive."""
    settings.TIERCACHE = {**settings.TIERCACHE, "PUBLISH_TIMEOUT": 0.2}
    started = time.monotonic()
    with transaction.atomic():
        Product.objects.create(name="Quiet", category=category)
    took = time.monotonic() - started
    assert took < 2.0  # Celery's defaults alone take 4 s or more to give up
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING
    assert row.attempts == 0
    assert "stay pending for a redrive" in caplog.text
    assert len(api.calls) == 0


@pytest.mark.parametrize("celery", ["unconfigured", "not installed"])
def test_without_a_configured_celery_purges_are_delivered_after_commit(
    settings: Any, category: Category, monkeypatch: pytest.MonkeyPatch, celery: str
) -> None:
    """PURGE_ASYNC with no usable Celery: synchronous delivery, never a publish to Celery's
    default broker on localhost (which nobody configured)."""
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "PURGE_ASYNC": True,
        "PURGERS": {"edge": {"BACKEND": "django_tiercache.purgers.locmem.LocMemPurger"}},
    }
    if celery == "not installed":
        monkeypatch.setitem(sys.modules, "celery", None)  # import celery raises ImportError
    for _ in use_app():  # a Celery app without broker_url, as Celery's default one
        with transaction.atomic():
            pen = Product.objects.create(name="Sync", category=category)
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE
    assert f"testapp.product:{pen.pk}" in locmem.purged_keys("edge")
