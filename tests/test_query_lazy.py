"""Recorded (lazy) querysets build exactly the query Django would have built."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db.models import QuerySet
from django.db.models.sql.query import Query

from django_tiercache.query import planner, querysets
from tests.testapp.models import Category, Product

CHAINS: dict[str, Callable[[QuerySet[Any]], QuerySet[Any]]] = {
    "filter": lambda qs: qs.filter(name="a", price__gte=1),
    "exclude": lambda qs: qs.exclude(name="a").filter(price=2),
    "m2m twice": lambda qs: qs.filter(tags__name="a").filter(tags__name="b"),
    "m2m once": lambda qs: qs.filter(tags__name="a", tags__id=3),
    "order and slice": lambda qs: qs.filter(category_id=1).order_by("-price", "name")[5:15],
    "slice of slice": lambda qs: qs.order_by("pk")[10:50][5:10],
    "clear ordering": lambda qs: qs.order_by("name").order_by(),
    "instance value": lambda qs: qs.filter(category=Category(pk=4)),
    "in list": lambda qs: qs.filter(pk__in=[1, 2, 3]),
    "then eager": lambda qs: qs.filter(name="x").select_related("category").filter(price=1),
}


@pytest.mark.parametrize("checked", [False, True], ids=["new", "checked before"])
@pytest.mark.parametrize("name", CHAINS)
def test_lazy_chain_builds_the_same_query(name: str, checked: bool) -> None:
    """New, the query Django built while checking is reused; checked before, it is rebuilt."""
    chain = CHAINS[name]
    querysets._checked.clear()
    if checked:
        chain(Product.objects.cached())
    lazy = chain(Product.objects.cached())
    eager = chain(Product.objects.cached().uncached())
    assert planner.fingerprint(lazy.query) == planner.fingerprint(eager.query)
    assert str(lazy.query) == str(eager.query)


def test_lazy_chain_records_instead_of_building() -> None:
    qs = Product.objects.cached().filter(name="a").order_by("name")[:10]
    assert qs._operations is not None
    assert len(qs._operations) == 3
    str(qs.query)
    assert qs._operations is None  # applied once, when the query was needed


@pytest.mark.django_db(transaction=True)
def test_a_miss_builds_each_filter_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The query Django built to check a new lookup is the one a miss runs: Django's own
    ``get()`` adds one filter, so does a cached one."""
    category = Category.objects.create(name="c")
    product = Product.objects.create(name="a", category=category)
    added: list[Any] = []
    add_q = Query.add_q
    monkeypatch.setattr(Query, "add_q", lambda query, q: added.append(q) or add_q(query, q))
    querysets._checked.clear()
    assert Product.objects.cached().get(pk=product.pk) == product
    assert len(added) == 1
    added.clear()
    chained = Product.objects.cached().filter(name="a").filter(category=category)
    assert list(chained) == [product]
    assert len(added) == 2


def test_django_errors_are_kept() -> None:
    sliced = Product.objects.cached()[:5]
    with pytest.raises(TypeError, match="slice"):
        sliced.filter(name="a")
    with pytest.raises(TypeError, match="slice"):
        sliced.order_by("name")
    with pytest.raises(ValueError, match="Negative"):
        Product.objects.cached()[-1:]


@pytest.mark.django_db(transaction=True)
def test_get_keeps_djangos_exceptions() -> None:
    category = Category.objects.create(name="c")
    Product.objects.create(name="a", category=category)
    Product.objects.create(name="a", category=category)
    with pytest.raises(Product.DoesNotExist):
        Product.objects.cached().get(name="missing")
    with pytest.raises(Product.MultipleObjectsReturned, match="it returned 2"):
        Product.objects.cached().get(name="a")
    with pytest.raises(Product.MultipleObjectsReturned):  # from the cache, the same
        Product.objects.cached().get(name="a")


@pytest.mark.django_db(transaction=True)
def test_models_never_share_entries() -> None:
    """Regression: two models' pristine querysets with the same operations are distinct."""
    category = Category.objects.create(name="pens")
    product = Product.objects.create(name="blue", category=category)
    assert Product.objects.cached().get(pk=product.pk).name == "blue"
    assert Category.objects.cached().get(pk=category.pk).name == "pens"
    Product.objects.create(name="red", category=category)
    assert Product.objects.cached().count() == 2
    assert Category.objects.cached().count() == 1
    assert Product.objects.cached().count() == 2
