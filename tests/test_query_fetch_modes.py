"""Django 6.1's fetch modes (``QuerySet.fetch_mode()``) on cached querysets: as Django does."""

from __future__ import annotations

from typing import Any

import django
import pytest

from tests.testapp.models import Category, Product

pytestmark = [
    pytest.mark.skipif(
        django.VERSION < (6, 1),
        reason=f"fetch modes are new in Django 6.1 (this is {django.__version__})",
    ),
    pytest.mark.django_db(transaction=True),
]


def _products(count: int = 3) -> None:
    for index in range(count):
        category = Category.objects.create(name=f"c{index}")
        Product.objects.create(name=f"p{index}", category=category)


@pytest.mark.parametrize("read", ["miss", "hit"])
def test_fetch_raise_blocks_lazy_loads(read: str) -> None:
    from django.core.exceptions import FieldFetchBlocked
    from django.db.models import FETCH_RAISE

    _products()
    if read == "hit":
        list(Product.objects.cached().filter(price__gte=0))  # stored in the default mode
    queryset: Any = Product.objects.cached().fetch_mode(FETCH_RAISE).filter(price__gte=0)
    rows = list(queryset)
    with pytest.raises(FieldFetchBlocked):
        rows[0].category  # noqa: B018


@pytest.mark.parametrize("read", ["miss", "hit"])
def test_fetch_peers_loads_a_relation_for_every_row_at_once(
    read: str, django_assert_num_queries: Any
) -> None:
    from django.db.models import FETCH_PEERS

    _products()

    def cached() -> list[Product]:
        queryset: Any = Product.objects.cached().fetch_mode(FETCH_PEERS).filter(price__gte=0)
        return list(queryset)

    if read == "hit":
        cached()
    rows = cached()
    with django_assert_num_queries(1):
        assert sorted(row.category.name for row in rows) == ["c0", "c1", "c2"]


def test_the_default_mode_is_kept_apart_from_others() -> None:
    from django.db.models import FETCH_RAISE

    _products(1)
    raising: Any = Product.objects.cached().fetch_mode(FETCH_RAISE).filter(price__gte=0)
    list(raising)
    (row,) = Product.objects.cached().filter(price__gte=0)
    assert row.category.name == "c0"  # loaded lazily, as Django's default FETCH_ONE does
