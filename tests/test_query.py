"""The query tier: every evaluation hits on the second call and is fresh after any change."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import Count, Prefetch, Sum
from django.test.utils import CaptureQueriesContext

from django_tiercache import collector, invalidate, stats
from django_tiercache.query import CachedQuerySet, TierCacheManager, query_results
from tests.testapp.models import Category, Product, Review, SpecialProduct, Tag, Untracked

pytestmark = pytest.mark.django_db(transaction=True)


class Queries:
    """Counts the SQL statements run inside a block."""

    def __init__(self) -> None:
        self.context = CaptureQueriesContext(connection)

    def __enter__(self) -> Queries:
        self.context.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.context.__exit__(*exc)

    @property
    def count(self) -> int:
        return len(self.context.captured_queries)


def db_queries(fn: Callable[[], Any]) -> tuple[Any, int]:
    with Queries() as queries:
        result = fn()
    return result, queries.count


@pytest.fixture
def shop() -> dict[str, Any]:
    pens = Category.objects.create(name="Pens")
    inks = Category.objects.create(name="Inks")
    red, blue = Tag.objects.create(name="red"), Tag.objects.create(name="blue")
    products = [
        Product.objects.create(name=f"pen{i}", price=Decimal(i), category=pens) for i in range(5)
    ]
    ink = Product.objects.create(name="ink", price=Decimal(9), category=inks)
    products[0].tags.add(red, blue)
    return {"pens": pens, "inks": inks, "red": red, "blue": blue, "products": products, "ink": ink}


EVALUATIONS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "list": lambda s: [p.name for p in Product.objects.cached().filter(category=s["pens"])],
    "get": lambda s: Product.objects.cached().get(pk=s["products"][0].pk).name,
    "first": lambda s: Product.objects.cached().order_by("name").first().name,
    "last": lambda s: Product.objects.cached().order_by("name").last().name,
    "count": lambda s: Product.objects.cached().filter(category=s["pens"]).count(),
    "exists": lambda s: Product.objects.cached().filter(name="pen0").exists(),
    "aggregate": lambda s: Product.objects.cached().aggregate(total=Sum("price"))["total"],
    "values": lambda s: list(Product.objects.cached().values("name", "price").order_by("pk")),
    "values_list": lambda s: list(
        Product.objects.cached().values_list("name", flat=True).order_by("pk")
    ),
    "in_bulk": lambda s: sorted(Product.objects.cached().in_bulk().keys()),
    "slice": lambda s: [p.name for p in Product.objects.cached().order_by("-price")[1:3]],
    "join_filter": lambda s: [
        p.name for p in Product.objects.cached().filter(category__name="Pens")
    ],
    "select_related": lambda s: [
        (p.name, p.category.name) for p in Product.objects.cached().select_related("category")
    ],
    "prefetch": lambda s: [
        (p.name, sorted(t.name for t in p.tags.all()))
        for p in Product.objects.cached().prefetch_related("tags").order_by("pk")
    ],
    "m2m_filter": lambda s: list(
        Product.objects.cached().filter(tags__name="red").values_list("name", flat=True)
    ),
    "annotate": lambda s: list(
        Category.objects.cached().annotate(n=Count("products")).values_list("name", "n")
    ),
    "subquery": lambda s: list(
        Product.objects.cached()
        .filter(category__in=Category.objects.filter(name="Pens"))
        .values_list("name", flat=True)
    ),
}

CHANGES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "save": lambda s: Product.objects.filter(pk=s["products"][0].pk).first().save(),
    "rename": lambda s: _rename(s["products"][0], "zzz"),
    "delete": lambda s: s["products"][1].delete(),
    "create": lambda s: Product.objects.create(name="new", price=50, category=s["pens"]),
    "category_rename": lambda s: _rename(s["pens"], "Pens!"),
    "tag_add": lambda s: s["products"][2].tags.add(s["red"]),
    "tag_remove": lambda s: s["products"][0].tags.remove(s["red"]),
    "tag_clear_reverse": lambda s: s["red"].products.clear(),
    "bulk_update": lambda s: Product.objects.filter(category=s["pens"]).update(price=Decimal(7)),
    "bulk_create": lambda s: Product.objects.bulk_create(
        [Product(name="bulk", price=1, category=s["pens"])]
    ),
    "queryset_delete": lambda s: Product.objects.filter(name="pen3").delete(),
    "move": lambda s: _move(s["products"][0], s["inks"]),
}


def _rename(obj: Any, name: str) -> None:
    obj.name = name
    obj.save()


def _move(product: Product, category: Category) -> None:
    product.category = category
    product.save()


@pytest.mark.parametrize("name", EVALUATIONS)
def test_second_evaluation_is_a_hit(shop: dict[str, Any], name: str) -> None:
    evaluation = EVALUATIONS[name]
    first, first_queries = db_queries(lambda: evaluation(shop))
    second, second_queries = db_queries(lambda: evaluation(shop))
    assert first == second
    assert first_queries >= 1
    assert second_queries == 0, f"{name} hit the database again"


@pytest.mark.parametrize("name", ["get", "count", "list"])
def test_a_hit_is_one_redis_command(shop: dict[str, Any], name: str, monkeypatch: Any) -> None:
    """One round trip per hit, however many tags (a list has one per row)."""
    evaluation = EVALUATIONS[name]
    evaluation(shop)
    evaluation(shop)  # a first hit also loads the script it runs
    client = query_results.transport.client  # type: ignore[attr-defined]
    commands: list[Any] = []
    execute = client.execute_command

    def counted(*args: Any, **options: Any) -> Any:
        commands.append(args[0])
        return execute(*args, **options)

    monkeypatch.setattr(client, "execute_command", counted)
    assert db_queries(lambda: evaluation(shop))[1] == 0
    assert len(commands) == 1, commands


@pytest.mark.parametrize(
    "options",
    [{}, {"PICKLE_VERSION": 2}, {"COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor"}],
    ids=["default", "pickle-2", "zlib"],
)
def test_entries_are_hits_with_each_django_redis_encoding(
    shop: dict[str, Any], settings: Any, options: dict[str, Any]
) -> None:
    caches = copy.deepcopy(settings.CACHES)
    caches["default"]["OPTIONS"].update(options)
    settings.CACHES = caches
    stats.reset()
    evaluate = lambda: Product.objects.cached().get(pk=shop["products"][0].pk).name  # noqa: E731

    first, _ = db_queries(evaluate)
    second, second_queries = db_queries(evaluate)

    assert (second, second_queries) == (first, 0)
    assert stats.snapshot()["query_errors"] == 0


@pytest.mark.parametrize("change", CHANGES)
@pytest.mark.parametrize("name", EVALUATIONS)
def test_fresh_after_every_change(shop: dict[str, Any], name: str, change: str) -> None:
    evaluation = EVALUATIONS[name]
    evaluation(shop)  # cache it
    CHANGES[change](shop)
    with query_tier_off():
        expected = evaluation(shop)
    assert evaluation(shop) == expected


class query_tier_off:  # a context manager, named like one
    """Evaluate without the query tier: ``.cached()`` on a manager or a queryset made inside
    returns the queryset uncached, so the result comes from the database."""

    def __enter__(self) -> None:
        self._originals = (CachedQuerySet.cached, TierCacheManager.cached)
        off = lambda self, *args, **kwargs: self.all().uncached()  # noqa: E731
        CachedQuerySet.cached = TierCacheManager.cached = off  # type: ignore[method-assign]

    def __exit__(self, *exc: Any) -> None:
        CachedQuerySet.cached, TierCacheManager.cached = self._originals  # type: ignore[method-assign]


def test_query_tier_off_reads_the_database(shop: dict[str, Any]) -> None:
    read = lambda: list(Product.objects.cached().order_by("pk"))  # noqa: E731
    read()
    with query_tier_off():
        assert db_queries(read)[1] == 1


def test_cached_none_and_empty_results_are_hits(shop: dict[str, Any]) -> None:
    empty = lambda: list(Product.objects.cached().filter(name="nothing"))  # noqa: E731
    assert db_queries(empty) == ([], 1)
    assert db_queries(empty) == ([], 0)
    calls: list[int] = []

    def compute() -> None:
        calls.append(1)

    assert query_results.get_or_set("none", compute, keys=["k"]) is None
    assert query_results.get_or_set("none", compute, keys=["k"]) is None
    assert calls == [1]


def test_get_or_set_is_tagged(shop: dict[str, Any]) -> None:
    values = iter(range(10))
    get = lambda: query_results.get_or_set("top", lambda: next(values), 60, ["shop.home"])  # noqa: E731
    assert get() == 0
    assert get() == 0
    invalidate("shop.home")
    assert get() == 1


def test_get_set_delete(shop: dict[str, Any]) -> None:
    assert query_results.get("k", default="miss") == "miss"
    query_results.set("k", [], keys=["a"])
    assert query_results.get("k", default="miss", keys=["a"]) == []
    invalidate("a")
    assert query_results.get("k", default="miss", keys=["a"]) == "miss"
    query_results.set("k", 1, keys=["a"])
    query_results.delete("k")
    assert query_results.get("k", default="miss", keys=["a"]) == "miss"


def test_pk_lookups_are_tagged_with_object_keys(shop: dict[str, Any]) -> None:
    first, second = shop["products"][0], shop["products"][1]
    get = lambda: Product.objects.cached().get(pk=first.pk)  # noqa: E731
    get()
    _rename(second, "other")  # another row of the same table
    assert db_queries(get)[1] == 0
    _rename(first, "changed")
    product, queries = db_queries(get)
    assert (product.name, queries) == ("changed", 1)


def test_extra_keys(shop: dict[str, Any]) -> None:
    evaluate = lambda: list(Category.objects.cached(keys=["home page"]).all())  # noqa: E731
    evaluate()
    assert db_queries(evaluate)[1] == 0
    invalidate("home page")
    assert db_queries(evaluate)[1] == 1


def test_cached_anywhere_in_the_chain(shop: dict[str, Any]) -> None:
    qs = Product.objects.filter(category=shop["pens"]).cached(timeout=60).order_by("name")
    assert db_queries(lambda: list(qs.all()))[1] >= 1
    assert db_queries(lambda: list(qs.all()))[1] == 0


def test_untracked_tables_are_never_cached(shop: dict[str, Any], caplog: Any) -> None:
    supplier = Untracked.objects.create(name="ACME")
    Product.objects.filter(pk=shop["ink"].pk).update(supplier=supplier)
    evaluate = lambda: list(  # noqa: E731
        Product.objects.cached().filter(supplier__name="ACME").values_list("name", flat=True)
    )
    assert evaluate() == ["ink"]
    Untracked.objects.filter(pk=supplier.pk).update(name="Other")  # no signal, no key
    assert evaluate() == []
    assert "untracked table" in caplog.text
    assert stats.get("query_bypasses") >= 2


def test_read_your_own_writes_inside_a_transaction(shop: dict[str, Any]) -> None:
    pen = shop["products"][0]
    get = lambda: Product.objects.cached().get(pk=pen.pk).name  # noqa: E731
    assert get() == "pen0"
    with transaction.atomic():
        _rename(pen, "inside")
        assert get() == "inside"
        assert list(Category.objects.cached().values_list("name", flat=True))  # other model
    assert get() == "inside"


def test_select_for_update_bypasses(shop: dict[str, Any]) -> None:
    with transaction.atomic():
        qs = Product.objects.cached().select_for_update().filter(pk=shop["ink"].pk)
        assert db_queries(lambda: list(qs.all()))[1] == 1
        assert db_queries(lambda: list(qs.all()))[1] == 1


def test_multi_table_inheritance(shop: dict[str, Any]) -> None:
    special = SpecialProduct.objects.create(name="gold", category=shop["pens"], badge="*")
    evaluate = lambda: [  # noqa: E731
        (p.name, p.badge) for p in SpecialProduct.objects.cached().all()
    ]
    assert evaluate() == [("gold", "*")]
    Product.objects.filter(pk=special.pk).update(name="silver")  # the parent table only
    assert evaluate() == [("silver", "*")]


def test_registered_model_and_related_keys(shop: dict[str, Any]) -> None:
    pen = shop["products"][0]
    reviews = Review.objects.cached().filter(product=pen)
    evaluate = lambda: list(reviews.all().values_list("text", flat=True))  # noqa: E731
    assert evaluate() == []
    Review.objects.create(product=pen, text="nice")
    assert evaluate() == ["nice"]


def test_request_scope_collects_keys(shop: dict[str, Any]) -> None:
    pen = shop["products"][0]
    token = collector.begin()
    try:
        Product.objects.cached().get(pk=pen.pk)
        list(Category.objects.cached().all())
        scope = collector.current()
        assert scope is not None
        assert scope.keys == {f"testapp.product:{pen.pk}", "testapp.category"}
        assert (scope.hits, scope.misses) == (0, 2)
        Product.objects.cached().get(pk=pen.pk)
        assert scope.hits == 1
    finally:
        collector.end(token)


def test_counters(shop: dict[str, Any]) -> None:
    stats.reset()
    evaluate = lambda: list(Tag.objects.cached().all())  # noqa: E731
    evaluate()
    evaluate()
    evaluate()
    snapshot = stats.snapshot()
    assert (snapshot["query_misses"], snapshot["query_hits"]) == (1, 2)


def test_prefetch_with_custom_queryset(shop: dict[str, Any]) -> None:
    evaluate = lambda: [  # noqa: E731
        [t.name for t in p.tags.all()]
        for p in Product.objects.cached()
        .prefetch_related(Prefetch("tags", queryset=Tag.objects.order_by("name")))
        .filter(pk=shop["products"][0].pk)
    ]
    assert evaluate() == [["blue", "red"]]
    assert db_queries(evaluate)[1] == 0
    _rename(shop["blue"], "azure")
    assert evaluate() == [["azure", "red"]]


def test_timeout_validation() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Product.objects.cached(timeout=float("inf"))
    with pytest.raises(ValueError, match="timeout"):
        Product.objects.cached(timeout=0)


def test_rows_updated_by_on_delete_set_null_are_fresh(shop: dict[str, Any]) -> None:
    supplier = Untracked.objects.create(name="ACME")
    ink = shop["ink"]
    Product.objects.filter(pk=ink.pk).update(supplier=supplier)
    get = lambda: Product.objects.cached().get(pk=ink.pk).supplier_id  # noqa: E731
    assert get() == supplier.pk
    supplier.delete()  # Django sets supplier to NULL with an UPDATE and no signal
    assert get() is None


def test_bad_timeout_in_get_or_set_raises_and_leaves_no_lock() -> None:
    with pytest.raises(ValueError, match="timeout"):
        query_results.get_or_set("k", lambda: 1, timeout=-1, keys=["a"])
    assert query_results.cache.get(query_results.lock_key("k")) is None
    assert query_results.get_or_set("k", lambda: 1, keys=["a"]) == 1
