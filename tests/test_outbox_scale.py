"""The outbox at scale: one row per transaction, claimed deliveries, chunked and backed-off
redrive, indexed recovery, pruning."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from celery.signals import before_task_publish
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

from django_tiercache import journal
from django_tiercache.edge import outbox
from django_tiercache.edge.purgers import locmem
from django_tiercache.edge.purgers.base import BasePurger, PurgeResult
from django_tiercache.edge.tasks import redrive_outbox
from django_tiercache.models import PurgeRequest
from tests.test_tasks import use_app
from tests.testapp.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def category(settings: Any) -> Category:
    saved = settings.TIERCACHE
    settings.TIERCACHE = {**saved, "PURGERS": {}}
    found = Category.objects.create(name="Pens")
    settings.TIERCACHE = saved
    return found


@pytest.fixture
def held(settings: Any) -> None:
    """A locmem purger whose rows are dispatched nowhere (the tests deliver them)."""
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "PURGERS": {"edge": {"BACKEND": "django_tiercache.purgers.locmem.LocMemPurger"}},
        "DISPATCHER": "tests.test_outbox_scale.hold",
    }


def hold(row_ids: list[int], using: str) -> None:
    """A dispatcher that sends nothing: the rows stay pending."""


def test_a_transaction_writes_one_row_for_all_its_changes(category: Category, held: None) -> None:
    with transaction.atomic():
        for number in range(200):
            Product.objects.create(name=f"p{number}", category=category)
    row = PurgeRequest.objects.get()
    # 200 object keys, the category and supplier scopes, the product table, the category
    assert len(row.keys) == 204
    assert row.status == PurgeRequest.Status.PENDING


def test_a_large_transaction_writes_a_row_per_max_keys(
    category: Category, held: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "MAX_KEYS_PER_ROW", 50)
    with transaction.atomic():
        products = [Product.objects.create(name=f"p{n}", category=category) for n in range(120)]
    rows = list(PurgeRequest.objects.order_by("pk"))
    assert [len(row.keys) for row in rows] == [50, 50, 24]
    expected = {f"testapp.product:{p.pk}" for p in products} | {
        "testapp.product",
        f"testapp.category:{category.pk}",
        f"testapp.product?category_id={category.pk}",
        "testapp.product?supplier_id=null",
    }
    assert {key for row in rows for key in row.keys} == expected


def test_a_rolled_back_savepoint_takes_its_keys_with_it(category: Category, held: None) -> None:
    with transaction.atomic():
        kept = Product.objects.create(name="kept", category=category)
        with pytest.raises(RuntimeError), transaction.atomic():
            gone = Product.objects.create(name="gone", category=category)
            raise RuntimeError
        kept.save()
    keys = {key for row in PurgeRequest.objects.all() for key in row.keys}
    assert f"testapp.product:{kept.pk}" in keys
    assert f"testapp.product:{gone.pk}" not in keys


def test_rows_another_delivery_holds_are_not_sent_again(category: Category, held: None) -> None:
    Product.objects.create(name="p", category=category)
    row = PurgeRequest.objects.get()
    assert outbox.claim([row.pk], "default", ["pending"]) == [row]  # a delivery holds it

    assert outbox.deliver([row.pk]) == {}
    assert locmem.calls == []

    PurgeRequest.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert outbox.deliver([row.pk])["edge"].ok  # the holder died: its claim ran out
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.DONE
    assert (row.claim, row.claimed_until) == ("", None)


class SlowPurger(BasePurger):
    """Takes a while per call, so concurrent deliveries overlap."""

    calls: list[tuple[str, ...]] = []

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        time.sleep(0.3)
        type(self).calls.append(tuple(keys))
        return PurgeResult(ok=True, keys=tuple(keys))


@pytest.mark.postgres
@pytest.mark.skipif(
    not connection.features.has_select_for_update_skip_locked,
    reason="concurrent deliveries need a database shared by threads (run on PostgreSQL)",
)
def test_concurrent_deliveries_of_the_same_rows_send_each_once(
    category: Category, settings: Any
) -> None:
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "PURGERS": {"slow": {"BACKEND": "tests.test_outbox_scale.SlowPurger"}},
        "DISPATCHER": "tests.test_outbox_scale.hold",
    }
    SlowPurger.calls = []
    for number in range(4):
        Product.objects.create(name=f"p{number}", category=category)
    ids = list(PurgeRequest.objects.values_list("pk", flat=True))
    start = threading.Barrier(4)

    def deliver() -> None:
        try:
            start.wait()
            outbox.deliver(ids)
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent = [key for call in SlowPurger.calls for key in call]
    assert sorted(sent) == sorted({key for row in PurgeRequest.objects.all() for key in row.keys})
    assert set(PurgeRequest.objects.values_list("status", flat=True)) == {"done"}


@pytest.fixture
def published() -> Iterator[list[Any]]:
    bodies: list[Any] = []

    def receiver(body: Any, **kwargs: Any) -> None:
        bodies.append(body)

    before_task_publish.connect(receiver)
    yield bodies
    before_task_publish.disconnect(receiver)


def old_rows(count: int, **fields: Any) -> list[int]:
    rows = PurgeRequest.objects.bulk_create(
        PurgeRequest(keys=[f"k{n}"], **fields) for n in range(count)
    )
    ids = [row.pk for row in rows]
    PurgeRequest.objects.filter(pk__in=ids).update(created=timezone.now() - timedelta(hours=1))
    return ids


def test_the_redrive_enqueues_bounded_chunks_oldest_first(
    held: None, published: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox, "REDRIVE_CHUNK", 2)
    ids = old_rows(5)
    for _app in use_app(broker_url="memory://"):
        assert redrive_outbox.apply(kwargs={"older_than": 60}).get() == 5
        assert [body[0][0] for body in published] == [ids[0:2], ids[2:4], ids[4:5]]
        # Enqueued rows are left alone for a while: the next run does not enqueue them again.
        assert redrive_outbox.apply(kwargs={"older_than": 60}).get() == 0


def test_the_redrive_skips_rows_still_backing_off_and_failed_rows(held: None) -> None:
    due, waiting = old_rows(2)
    PurgeRequest.objects.filter(pk=waiting).update(
        next_attempt=timezone.now() + timedelta(minutes=5)
    )
    (failed,) = old_rows(1, status=PurgeRequest.Status.FAILED)
    assert outbox.stale_rows(60) == [due]
    assert outbox.stale_rows(60, include_failed=True) == [due, failed]
    assert outbox.stale_rows(60, ignore_backoff=True) == [due, waiting]


def test_recovery_finds_missed_rows_by_an_indexed_column(category: Category, held: None) -> None:
    Product.objects.create(name="p", category=category)
    row = PurgeRequest.objects.get()
    journal.record_failure("query", [row.pk], "default", ConnectionError("down"))
    row.refresh_from_db()
    assert row.tier_missed
    assert list(journal.unfinished("default", missed=True)) == [row]
    where = str(journal.unfinished("default", missed=True).query).split(" WHERE ")[1]
    assert "tier_missed" in where
    assert "results" not in where  # no JSON lookup

    from django_tiercache import invalidation

    assert invalidation.recover() == 1
    row.refresh_from_db()
    assert not row.tier_missed
    assert row.results["query"]["ok"] is True


def test_prune_deletes_old_done_rows_only() -> None:
    old_done = old_rows(3, status=PurgeRequest.Status.DONE)
    old_pending = old_rows(1)
    old_failed = old_rows(1, status=PurgeRequest.Status.FAILED)
    recent_done = PurgeRequest.objects.create(keys=["new"], status=PurgeRequest.Status.DONE)

    out = StringIO()
    call_command("tiercache_purge", "--prune", "--older-than", "600", stdout=out)

    assert "Pruned 3 done purge requests created more than 600s ago" in out.getvalue()
    remaining = set(PurgeRequest.objects.values_list("pk", flat=True))
    assert remaining == {*old_pending, *old_failed, recent_done.pk}
    assert not remaining & set(old_done)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prune"], "--prune needs --older-than"),
        (["k", "--older-than", "5"], "--older-than goes with --redrive or --prune"),
        (["--prune", "--redrive", "--older-than", "5"], "--prune takes no keys"),
    ],
)
def test_option_mistakes_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(CommandError) as excinfo:
        call_command("tiercache_purge", *args, stdout=StringIO(), stderr=StringIO())
    assert message in str(excinfo.value)
    assert excinfo.value.returncode == 2


def test_a_sync_redrive_counts_the_keys_it_sent(held: None) -> None:
    old_rows(2)
    PurgeRequest.objects.update(keys=["shared"])
    out = StringIO()
    call_command("tiercache_purge", "--redrive", "--sync", stdout=out)
    assert "edge: ok, 1 key purged" in out.getvalue()  # two rows, one key sent once
    assert locmem.purged_keys() == {"shared"}
