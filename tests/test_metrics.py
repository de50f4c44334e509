"""Metrics: counters in ``django_tiercache.stats`` and the ``purge_completed``/``purge_failed``
signals sent for every purge."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from django.utils import timezone

import django_tiercache
from django_tiercache import stats
from django_tiercache.edge import outbox
from django_tiercache.edge.events import purge_completed, purge_failed
from django_tiercache.edge.purgers.fastly import FastlyPurger
from django_tiercache.edge.purgers.locmem import LocMemPurger
from django_tiercache.models import PurgeRequest
from django_tiercache.query import query_results
from tests.test_purgers_fastly import FASTLY
from tests.test_purgers_fastly import TOKEN as FASTLY_TOKEN
from tests.testapp.models import Category

pytestmark = pytest.mark.django_db(transaction=True)

FASTLY_PURGER = {
    "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
    "SERVICE_ID": "SU1Z0isxPaozGVKXdv0eY",
    "API_TOKEN": FASTLY_TOKEN,
}


@pytest.fixture(autouse=True)
def _fresh_counters() -> Iterator[None]:
    stats.reset()
    yield
    stats.reset()


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every purge signal sent during the test: (signal name, keyword arguments)."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def on_completed(**kwargs: Any) -> None:
        seen.append(("completed", kwargs))

    def on_failed(**kwargs: Any) -> None:
        seen.append(("failed", kwargs))

    purge_completed.connect(on_completed)
    purge_failed.connect(on_failed)
    yield seen
    purge_completed.disconnect(on_completed)
    purge_failed.disconnect(on_failed)


def test_the_signals_are_public_names() -> None:
    assert django_tiercache.purge_completed is purge_completed
    assert django_tiercache.purge_failed is purge_failed


def test_a_completed_purge_is_counted_and_signalled(
    purgers: Any, received: list[tuple[str, dict[str, Any]]]
) -> None:
    category = Category.objects.create(name="Shoes")

    assert [name for name, _ in received] == ["completed"]
    kwargs = received[0][1]
    assert kwargs["sender"] is LocMemPurger
    assert kwargs["purger"] == "edge"
    assert kwargs["keys"] == frozenset({f"testapp.category:{category.pk}", "testapp.category"})
    assert kwargs["result"].ok
    assert kwargs["purge_all"] is False
    assert kwargs["retry"] is False
    assert kwargs["row_ids"] == [PurgeRequest.objects.get().pk]
    assert kwargs["using"] == "default"
    counters = stats.snapshot()
    assert counters["purges_sent"] == 1
    assert counters["keys_purged"] == 2
    assert counters["purges_failed"] == counters["purges_retried"] == 0


@responses.activate
def test_failures_and_retries_are_counted_and_signalled(
    settings: Any, received: list[tuple[str, dict[str, Any]]]
) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGERS": {"fastly": FASTLY_PURGER}}
    responses.add(responses.POST, FASTLY, json={"msg": "overloaded"}, status=503)

    Category.objects.create(name="Shoes")

    assert [name for name, _ in received] == ["failed"]
    failed = received[0][1]
    assert failed["sender"] is FastlyPurger
    assert failed["result"].retryable
    assert "HTTP 503" in failed["result"].error
    assert stats.get("purges_failed") == 1

    responses.replace(responses.POST, FASTLY, json={"status": "ok"}, status=200)
    PurgeRequest.objects.update(next_attempt=timezone.now())  # the redrive's backoff has passed
    outbox.redrive(older_than=0)

    assert [name for name, _ in received] == ["failed", "completed"]
    assert received[1][1]["retry"] is True
    counters = stats.snapshot()
    assert counters["purges_sent"] == 2
    assert counters["purges_retried"] == 1
    assert counters["keys_purged"] == 2
    assert FASTLY_TOKEN not in repr(received)


def test_a_purge_of_everything_counts_no_keys(
    purgers: Any, received: list[tuple[str, dict[str, Any]]]
) -> None:
    row = PurgeRequest.objects.create(purge_all=True)

    outbox.deliver([row.pk])

    assert received[0][1]["purge_all"] is True
    assert received[0][1]["keys"] == frozenset()
    assert stats.get("purges_sent") == 1
    assert stats.get("keys_purged") == 0


def test_a_broken_receiver_never_stops_the_delivery(
    purgers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**kwargs: Any) -> None:
        raise RuntimeError("metrics backend down")

    purge_completed.connect(broken)
    try:
        Category.objects.create(name="Shoes")
    finally:
        purge_completed.disconnect(broken)

    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE
    assert "purge_completed receiver" in caplog.text
    assert "metrics backend down" in caplog.text


def test_outbox_pending_age_is_the_age_of_the_oldest_pending_row() -> None:
    assert stats.outbox_pending_age() is None

    PurgeRequest.objects.create(keys=["done"], status=PurgeRequest.Status.DONE)
    PurgeRequest.objects.create(keys=["new"])
    old = PurgeRequest.objects.create(keys=["old"])
    PurgeRequest.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(hours=1))

    age = stats.outbox_pending_age()
    assert age is not None
    assert age >= 3600


def test_query_tier_counters() -> None:
    query_results.get_or_set("home", lambda: ["a"], keys=["shop.home"])
    query_results.get_or_set("home", lambda: ["b"], keys=["shop.home"])

    counters = stats.snapshot()
    assert counters["query_misses"] == 1
    assert counters["query_hits"] == 1
    assert set(stats.NAMES) >= {
        "query_hits",
        "query_misses",
        "query_stale",
        "query_errors",
        "purges_sent",
        "purges_failed",
        "purges_retried",
        "keys_purged",
    }
