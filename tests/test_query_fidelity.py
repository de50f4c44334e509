"""A cached queryset behaves as Django's own: each case here is one Django's ORM suite found
(``make django-suite``), kept as a small regression test."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.core.exceptions import FieldDoesNotExist, FieldError
from django.db import connection, transaction
from django.db.migrations.state import ProjectState
from django.db.models import Prefetch, Sum
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from django_tiercache.http.decorators import origin_cache
from django_tiercache.http.middleware import TierCacheMiddleware
from django_tiercache.query import CachedQuerySet
from tests.test_query import db_queries
from tests.testapp.models import Category, Product, Tag, Untracked

pytestmark = pytest.mark.django_db(transaction=True)


def test_query_on_an_automatic_through_model_is_cached() -> None:
    category = Category.objects.create(name="c")
    product = Product.objects.create(name="p", price=1, category=category)
    product.tags.add(Tag.objects.create(name="t"))
    through: Any = Product.tags.through  # made by Django, not importable by name
    rows = lambda: [r.tag_id for r in CachedQuerySet(model=through).cached()]  # noqa: E731
    first, _ = db_queries(rows)
    assert db_queries(rows) == (first, 0)


def test_historical_model_rows_are_its_own_instances() -> None:
    """A migration's model shares the installed model's table and label, never its entries."""
    category = Category.objects.create(name="c")
    Product.objects.create(name="p", price=1, category=category)
    list(Product.objects.cached())
    historical = ProjectState.from_apps(apps).apps.get_model("testapp", "Product")
    for _ in range(2):
        rows = list(CachedQuerySet(model=historical).cached())
        assert [type(row) for row in rows] == [historical]


@pytest.fixture
def pens() -> Category:
    pens = Category.objects.create(name="Pens")
    for i in range(3):
        Product.objects.create(name=f"pen{i}", price=i, category=pens)
    return pens


def test_aggregates_that_print_alike_are_cached_apart(pens: Category) -> None:
    """Django's repr() of an aggregate leaves ``default=`` out."""
    empty = lambda: Product.objects.cached().filter(name="none")  # noqa: E731
    assert empty().aggregate(v=Sum("price", default=35)) == {"v": 35}
    assert empty().aggregate(v=Sum("price", default=21)) == {"v": 21}


def test_nested_prefetch_querysets_are_cached_apart(pens: Category) -> None:
    def categories(name: str) -> list[Any]:
        inner = Prefetch("tags", queryset=Tag.objects.filter(name=name), to_attr="picked")
        products = Product.objects.prefetch_related(inner)
        outer = Prefetch("products", queryset=products)
        rows = Category.objects.cached().prefetch_related(outer)
        return [[p.picked for p in c.products.all()] for c in rows]

    red = Tag.objects.create(name="red")
    for product in Product.objects.all():
        product.tags.add(red)
    assert categories("blue") == [[[], [], []]]
    assert categories("red") == [[[red], [red], [red]]]


@pytest.mark.parametrize(
    "call",
    [
        lambda: Product.objects.cached().filter(no_such_field=1),
        lambda: Product.objects.cached().exclude(category__no_such_field=1),
        lambda: Product.objects.cached().order_by("no_such_field"),
        lambda: Product.objects.cached().filter(name__no_such_lookup="a"),
    ],
)
def test_field_errors_raise_where_django_raises_them(call: Any) -> None:
    with pytest.raises(FieldError):
        call()  # not evaluated: Django raises while building


def test_value_errors_raise_where_django_raises_them() -> None:
    with pytest.raises(ValueError, match="expected a number"):
        Product.objects.cached().filter(pk="not a number")


def test_update_of_a_values_queryset(pens: Category) -> None:
    assert Product.objects.cached().values("pk").update(name="x") == 3
    assert {p.name for p in Product.objects.cached()} == {"x"}


def test_update_on_a_slice_raises_djangos_error(pens: Category) -> None:
    with pytest.raises(TypeError, match="Cannot update a query once a slice has been taken"):
        Product.objects.cached()[:1].update(name="x")


def test_caught_validation_error_leaves_the_callers_transaction_usable(pens: Category) -> None:
    with transaction.atomic():
        with pytest.raises(FieldDoesNotExist):
            Product.objects.cached().update(no_such_field=1)
        with pytest.raises(ValueError, match="primary key"):
            Product.objects.bulk_update([Product(name="new")], ["name"])
        assert Product.objects.cached().count() == 3  # no TransactionManagementError


@pytest.mark.postgres
@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="DISTINCT ON needs PostgreSQL (run with TIERCACHE_TEST_DATABASE=postgres)",
)
def test_get_keeps_the_ordering_of_distinct_on(pens: Category) -> None:
    inks = Category.objects.create(name="Inks")
    Product.objects.create(name="pen1", price=9, category=inks)
    expected = Product.objects.distinct("name").order_by("name", "-price").get(name="pen1")
    cached = Product.objects.cached().distinct("name").order_by("name", "-price").get(name="pen1")
    assert (cached.pk, cached.price) == (expected.pk, expected.price) == (expected.pk, 9)


def _origin_response(read: Any) -> Any:
    """The response of an ``origin_cache`` view that runs ``read()`` inside a transaction."""

    @origin_cache(60)
    def page(request: HttpRequest) -> HttpResponse:
        with transaction.atomic():
            return HttpResponse(str(read()))

    return TierCacheMiddleware(page)(RequestFactory().get("/"))


def _written_then_read(pens: Category) -> int:
    Product.objects.filter(category=pens).update(price=5)  # pending in this transaction
    return Product.objects.cached().filter(category=pens).count()


@pytest.mark.parametrize(
    "read",
    [
        _written_then_read,
        lambda pens: list(Product.objects.cached().select_for_update().filter(category=pens)),
    ],
    ids=["own write", "select_for_update"],
)
def test_a_read_that_bypasses_the_cache_still_tags_the_response(pens: Category, read: Any) -> None:
    response = _origin_response(lambda: read(pens))
    assert "public" in response["Cache-Control"]
    # The table key (a count) or the list's scope key (rows, with their own keys).
    tags = {"testapp.product", f"testapp.product?category_id={pens.pk}"}
    assert tags & set(response["Surrogate-Key"].split())


def test_a_read_no_key_can_purge_keeps_the_response_off_the_edge(pens: Category) -> None:
    Product.objects.update(supplier=Untracked.objects.create(name="s"))
    read = lambda: list(Product.objects.cached().filter(supplier__friends__name="s"))  # noqa: E731
    response = _origin_response(read)
    assert "public" not in response["Cache-Control"]
    assert "Surrogate-Key" not in response


def test_deleting_a_row_invalidates_the_through_rows_django_deletes_with_it(pens: Category) -> None:
    red = Tag.objects.create(name="red")
    Product.objects.get(name="pen0").tags.add(red)
    red_pk = red.pk
    tagged = lambda: [p.name for p in Product.objects.cached().filter(tags__id=red_pk)]  # noqa: E731
    assert tagged() == ["pen0"]
    red.delete()  # its through rows go without a signal
    assert tagged() == []


def test_bulk_create_ignoring_conflicts_invalidates_rows_it_got_no_keys_for() -> None:
    """With ignore_conflicts the database returns no primary keys."""
    probe = Category.objects.create(name="probe")
    following = list(range(probe.pk + 1, probe.pk + 10))  # the next rows' keys
    probe.delete()
    by_pk = lambda: list(Category.objects.cached().filter(pk__in=following))  # noqa: E731
    assert by_pk() == []  # tagged with the object keys of those rows only
    Category.objects.bulk_create([Category(name="new")], ignore_conflicts=True)
    assert [c.name for c in by_pk()] == ["new"]
