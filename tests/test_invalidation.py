"""Model changes → keys → query tier then edge, only after commit, deduplicated per transaction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from django_tiercache import invalidate, invalidation, manual
from django_tiercache.edge.outbox import redrive
from django_tiercache.edge.purgers.locmem import purged_keys
from django_tiercache.invalidation import keys_invalidated
from django_tiercache.models import PurgeRequest
from django_tiercache.query import query_results
from tests.conftest import LOCMEM_PURGERS
from tests.testapp.models import Category, Product, Review, SpecialProduct, Tag, Untracked

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def flushed() -> Iterator[list[frozenset[str]]]:
    """Each batch of keys invalidated after a commit, in order."""
    batches: list[frozenset[str]] = []

    def receiver(keys: frozenset[str], **kwargs: Any) -> None:
        batches.append(keys)

    keys_invalidated.connect(receiver)
    yield batches
    keys_invalidated.disconnect(receiver)


@pytest.fixture
def category() -> Category:
    return Category.objects.create(name="Pens")


def union(batches: list[frozenset[str]]) -> set[str]:
    return set().union(*batches)


def product_scopes(product: Product) -> set[str]:
    """The scope keys a save of ``product`` invalidates (its scoped fields as saved: the
    foreign keys; the name is neither indexed nor unique)."""
    return {
        f"testapp.product?category_id={product.category_id}",
        "testapp.product?supplier_id=null",
    }


def test_save_outside_a_transaction_invalidates_at_once(flushed: list[frozenset[str]]) -> None:
    category = Category.objects.create(name="Pens")
    assert flushed == [{f"testapp.category:{category.pk}", "testapp.category"}]


def test_nothing_is_invalidated_before_commit(
    category: Category, flushed: list[frozenset[str]]
) -> None:
    flushed.clear()
    with transaction.atomic():
        product = Product.objects.create(name="Blue", category=category)
        assert flushed == []
    assert flushed == [
        {
            f"testapp.product:{product.pk}",
            "testapp.product",
            f"testapp.category:{category.pk}",
            *product_scopes(product),
        }
    ]


def test_rollback_invalidates_nothing(category: Category, flushed: list[frozenset[str]]) -> None:
    flushed.clear()
    with pytest.raises(RuntimeError), transaction.atomic():
        Product.objects.create(name="Blue", category=category)
        raise RuntimeError
    assert flushed == []


def test_hundred_saves_give_one_key_set(category: Category, flushed: list[frozenset[str]]) -> None:
    product = Product.objects.create(name="Blue", category=category)
    flushed.clear()
    with transaction.atomic():
        for price in range(100):
            product.price = price
            product.save()
    assert len(flushed) == 1
    assert flushed[0] == {
        f"testapp.product:{product.pk}",
        "testapp.product",
        f"testapp.category:{category.pk}",
        *product_scopes(product),
    }


def test_savepoint_rollback_drops_only_its_keys(
    category: Category, flushed: list[frozenset[str]]
) -> None:
    flushed.clear()
    with transaction.atomic():
        kept = Tag.objects.create(name="kept")
        try:
            with transaction.atomic():
                Category.objects.create(name="dropped")
                raise RuntimeError
        except RuntimeError:
            pass
        with transaction.atomic():
            inner = Tag.objects.create(name="inner")
    keys = union(flushed)
    assert f"testapp.tag:{kept.pk}" in keys
    assert f"testapp.tag:{inner.pk}" in keys
    assert not any(key.startswith("testapp.category") for key in keys)


def test_keys_of_an_inner_savepoint_are_not_repeated(
    category: Category, flushed: list[frozenset[str]]
) -> None:
    product = Product.objects.create(name="Blue", category=category)
    flushed.clear()
    with transaction.atomic():
        product.save()
        with transaction.atomic():
            product.save()
    assert len(flushed) == 1


def test_delete_invalidates(category: Category, flushed: list[frozenset[str]]) -> None:
    product = Product.objects.create(name="Blue", category=category)
    pk = product.pk
    flushed.clear()
    product.delete()
    assert f"testapp.product:{pk}" in union(flushed)


def test_cascade_delete_invalidates_children(
    category: Category, flushed: list[frozenset[str]]
) -> None:
    product = Product.objects.create(name="Blue", category=category)
    category_pk = category.pk
    flushed.clear()
    category.delete()
    keys = union(flushed)
    assert f"testapp.product:{product.pk}" in keys
    assert f"testapp.category:{category_pk}" in keys


def test_registered_model_invalidates_declared_keys(
    category: Category, flushed: list[frozenset[str]]
) -> None:
    product = Product.objects.create(name="Blue", category=category)
    flushed.clear()
    review = Review.objects.create(product=product, text="good")
    assert flushed == [
        {
            f"testapp.review:{review.pk}",
            "testapp.review",
            f"testapp.product:{product.pk}",
            "reviews",
            f"testapp.review?product_id={product.pk}",
        }
    ]


def test_untracked_models_invalidate_nothing(flushed: list[frozenset[str]]) -> None:
    a = Untracked.objects.create(name="a")
    b = Untracked.objects.create(name="b")
    a.friends.add(b)
    a.delete()
    assert flushed == []


def test_multi_table_inheritance(category: Category, flushed: list[frozenset[str]]) -> None:
    flushed.clear()
    special = SpecialProduct.objects.create(name="Gold", category=category)
    keys = union(flushed)
    assert {
        f"testapp.specialproduct:{special.pk}",
        f"testapp.product:{special.pk}",
        "testapp.product",
        "testapp.specialproduct",
    } <= keys


@pytest.fixture
def pen(category: Category) -> Product:
    return Product.objects.create(name="Blue", category=category)


@pytest.fixture
def tags() -> list[Tag]:
    return [Tag.objects.create(name=f"t{i}") for i in range(3)]


THROUGH = "testapp.product_tags"


@pytest.mark.parametrize("side", ["forward", "reverse"])
@pytest.mark.parametrize("action", ["add", "remove", "clear"])
def test_m2m_changes_invalidate_both_sides(
    pen: Product, tags: list[Tag], flushed: list[frozenset[str]], side: str, action: str
) -> None:
    pen.tags.add(*tags)
    for tag in tags[1:]:
        tag.products.add(Product.objects.create(name="Other", category=pen.category))
    flushed.clear()
    if side == "forward":
        manager, others = pen.tags, [f"testapp.tag:{t.pk}" for t in tags]
        own = f"testapp.product:{pen.pk}"
    else:
        manager, others = tags[0].products, [f"testapp.product:{pen.pk}"]
        own = f"testapp.tag:{tags[0].pk}"
    target = tags if side == "forward" else [pen]
    if action == "add":
        manager.remove(*target)
        flushed.clear()
        manager.add(*target)
    elif action == "remove":
        manager.remove(*target)
    else:
        manager.clear()
    keys = union(flushed)
    assert {own, THROUGH, *others} <= keys
    if side == "reverse":  # the product's own related keys come along
        assert f"testapp.category:{pen.category_id}" in keys
    else:
        assert f"testapp.product:{pen.pk + 1}" not in keys


def test_public_invalidate_waits_for_commit(flushed: list[frozenset[str]]) -> None:
    with transaction.atomic():
        invalidate("home", "sitemap page")
        assert flushed == []
    assert flushed == [{"home", "sitemap%20page"}]


def test_query_tier_is_bumped_on_commit(pen: Product) -> None:
    key = f"testapp.product:{pen.pk}"
    before = query_results.versions([key])[key]
    with transaction.atomic():
        pen.save()
        assert query_results.versions([key])[key] == before
    assert query_results.versions([key])[key] not in (None, before)


def test_query_tier_first_then_edge(pen: Product, purgers: list[Any], monkeypatch: Any) -> None:
    order: list[str] = []
    real_invalidate = query_results.invalidate
    monkeypatch.setattr(
        query_results,
        "invalidate",
        lambda keys, using: (order.append("query"), real_invalidate(keys, using)),
    )
    from django_tiercache.edge.purgers.locmem import LocMemPurger

    real_send = LocMemPurger.send_batch
    monkeypatch.setattr(
        LocMemPurger,
        "send_batch",
        lambda self, keys, soft: (order.append("edge"), real_send(self, keys, soft=soft))[1],
    )
    pen.save()
    assert order == ["query", "edge"]


class ExtraTier:
    """A third tier registered with the orchestrator after the query tier."""

    def __init__(self) -> None:
        self.calls: list[set[str]] = []
        self.order: list[str] = []
        self.down = False

    def invalidate(self, keys: set[str], using: str) -> None:
        self.calls.append(set(keys))
        self.order.append("extra")
        if self.down:
            raise ConnectionError("extra tier down")


@pytest.fixture
def extra_tier(monkeypatch: Any) -> ExtraTier:
    tier = ExtraTier()
    monkeypatch.setattr(invalidation, "_tiers", dict(invalidation._tiers))
    invalidation.register_tier(
        invalidation.TierHandler(
            name="extra", invalidate=tier.invalidate, invalidate_all=lambda: None
        )
    )
    return tier


def test_tiers_are_called_through_their_handlers_in_order(
    pen: Product, purgers: list[Any], extra_tier: ExtraTier, monkeypatch: Any
) -> None:
    from django_tiercache.edge.purgers.locmem import LocMemPurger

    order = extra_tier.order
    real_invalidate = query_results.invalidate
    monkeypatch.setattr(
        query_results,
        "invalidate",
        lambda keys, using: (order.append("query"), real_invalidate(keys, using)),
    )
    real_send = LocMemPurger.send_batch
    monkeypatch.setattr(
        LocMemPurger,
        "send_batch",
        lambda self, keys, soft: (order.append("edge"), real_send(self, keys, soft=soft))[1],
    )
    pen.save()
    assert order == ["query", "extra", "edge"]
    assert extra_tier.calls == [
        {
            f"testapp.product:{pen.pk}",
            "testapp.product",
            f"testapp.category:{pen.category_id}",
            *product_scopes(pen),
        }
    ]


def test_a_tier_failure_is_journaled_under_its_name_and_reapplied(
    pen: Product, purgers: list[Any], extra_tier: ExtraTier
) -> None:
    extra_tier.down = True
    pen.save()  # no exception reaches the caller
    row = PurgeRequest.objects.get()
    assert row.results["extra"]["ok"] is False
    assert "extra tier down" in row.results["extra"]["error"]
    assert row.status == PurgeRequest.Status.PENDING
    extra_tier.down = False
    extra_tier.calls.clear()
    assert invalidation.recover() == 1
    assert extra_tier.calls == [set(row.keys)]
    backoff_passed()
    redrive(older_than=0)
    row.refresh_from_db()
    assert row.results["extra"]["ok"] is True
    assert row.status == PurgeRequest.Status.DONE


def test_outbox_row_commits_with_the_data(pen: Product, purgers: list[Any]) -> None:
    with transaction.atomic():
        pen.name = "Red"
        pen.save()
        row = PurgeRequest.objects.get()
        assert row.status == PurgeRequest.Status.PENDING
        assert purgers == []
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.DONE
    assert row.attempts == 1
    assert row.results["edge"]["ok"] is True
    assert set(row.keys) == {
        f"testapp.product:{pen.pk}",
        "testapp.product",
        f"testapp.category:{pen.category_id}",
        *product_scopes(pen),
    }
    assert purged_keys("edge") == set(row.keys)


def test_outbox_row_rolls_back_with_the_data(pen: Product, purgers: list[Any]) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        pen.save()
        raise RuntimeError
    assert not PurgeRequest.objects.exists()
    assert purgers == []


def test_no_outbox_row_without_purgers(pen: Product) -> None:
    pen.save()
    assert not PurgeRequest.objects.exists()


def test_one_outbox_purge_for_many_changes(category: Category, purgers: list[Any]) -> None:
    with transaction.atomic():
        products = [Product.objects.create(name=f"p{i}", category=category) for i in range(300)]
        for product in products:
            product.save()
    # 300 object keys, category and supplier scopes, product table, category key: 304 keys,
    # 256 per call
    assert [len(call.keys) for call in purgers] == [256, 48]
    assert PurgeRequest.objects.exclude(status=PurgeRequest.Status.DONE).count() == 0


class QueryTierDown:
    """Makes the query tier's invalidation fail until ``restore()``."""

    def __init__(self, monkeypatch: Any) -> None:
        self.monkeypatch = monkeypatch
        monkeypatch.setattr(query_results, "invalidate", self._down)

    @staticmethod
    def _down(keys: Any, using: Any = None) -> None:
        raise ConnectionError("redis down")

    def restore(self) -> None:
        self.monkeypatch.undo()


@pytest.fixture
def query_tier_down(monkeypatch: Any) -> QueryTierDown:
    return QueryTierDown(monkeypatch)


def backoff_passed() -> None:
    """The redrive leaves a row alone for a while after a failed delivery: let that pass."""
    PurgeRequest.objects.update(next_attempt=timezone.now())


def assert_redrive_invalidates(row: PurgeRequest, key: str) -> None:
    """After the outage, a redrive bumps ``key`` in the query tier and finishes ``row``."""
    before = query_results.versions([key])[key]
    backoff_passed()
    redrive(older_than=0)
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.DONE
    assert query_results.versions([key])[key] != before


def test_cache_outage_at_commit_never_reaches_save(
    pen: Product, purgers: list[Any], query_tier_down: QueryTierDown, caplog: Any
) -> None:
    pen.save()  # no exception reaches the caller
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING
    assert row.results["query"]["ok"] is False
    assert row.results["edge"]["ok"] is True
    assert "query-tier invalidation" in caplog.text

    query_tier_down.restore()
    assert_redrive_invalidates(row, f"testapp.product:{pen.pk}")
    assert len(purgers) == 2  # the edge again, once the query tier has caught up


def test_the_edge_is_purged_again_once_the_query_tier_replayed_what_it_missed(
    pen: Product, purgers: list[Any], query_tier_down: QueryTierDown
) -> None:
    """The edge was purged while the query tier still held entries from before the commit: a
    page the CDN fetched meanwhile may have been built from them. Once the query tier has
    replayed the invalidation (its own recovery here), the next delivery purges the edge again."""
    pen.save()
    row = PurgeRequest.objects.get()
    assert row.results["edge"]["ok"] is True
    query_tier_down.restore()
    assert invalidation.recover(tier="query") == 1
    backoff_passed()
    redrive(older_than=0)
    assert [set(call.keys) for call in purgers] == [set(row.keys)] * 2
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.DONE
    redrive(older_than=0)
    assert len(purgers) == 2


def test_purger_failure_never_reaches_save(
    pen: Product, purgers: list[Any], monkeypatch: Any
) -> None:
    from django_tiercache.edge.purgers.locmem import LocMemPurger

    def boom(self: Any, keys: Any, soft: bool) -> Any:
        raise OSError("edge unreachable")

    monkeypatch.setattr(LocMemPurger, "send_batch", boom)
    pen.save()
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING
    assert "edge unreachable" in row.last_error


def test_one_flush_per_transaction_across_savepoints(
    category: Category, flushed: list[frozenset[str]], purgers: list[Any]
) -> None:
    flushed.clear()
    with transaction.atomic():
        for i in range(5):
            Tag.objects.get_or_create(name=f"t{i}")  # a savepoint each
        with transaction.atomic(savepoint=False):
            Category.objects.create(name="inside")
    assert len(flushed) == 1
    assert len([k for k in flushed[0] if k.startswith("testapp.tag:")]) == 5
    assert len(purgers) == 1  # one purge call for the whole transaction


def test_cache_outage_without_purgers_keeps_a_row_for_the_redrive(
    pen: Product, query_tier_down: QueryTierDown
) -> None:
    pen.save()  # no purger configured, cache down at commit
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING
    assert f"testapp.product:{pen.pk}" in row.keys
    query_tier_down.restore()
    assert_redrive_invalidates(row, f"testapp.product:{pen.pk}")


@pytest.mark.parametrize("with_purger", [False, True])
def test_a_manual_purge_the_query_tier_missed_is_recovered_like_a_commit(
    settings: Any, query_tier_down: QueryTierDown, with_purger: bool
) -> None:
    if with_purger:
        settings.TIERCACHE = {**settings.TIERCACHE, "PURGERS": LOCMEM_PURGERS}
    row = manual.request_purge(["home"])
    assert row.status == PurgeRequest.Status.PENDING
    assert row.results["query"]["ok"] is False
    query_tier_down.restore()
    before = query_results.versions(["home"])["home"]
    assert invalidation.recover(tier="query") == 1
    assert query_results.versions(["home"])["home"] != before
    assert invalidation.recover(tier="query") == 0
