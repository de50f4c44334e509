"""A list of rows is stored as one table (django_tiercache.query.rows) and comes back as the
instances Django's own pickling gives back."""

from __future__ import annotations

import pickle
from decimal import Decimal
from typing import Any

import pytest
from django.db import models
from django.db.models import F
from django.test.utils import isolate_apps

from django_tiercache.query import rows
from tests.test_query import db_queries
from tests.testapp.models import Category, Product, SpecialProduct

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pens() -> Category:
    pens = Category.objects.create(name="Pens")
    for i in range(3):
        Product.objects.create(name=f"pen{i}", price=Decimal(i), category=pens)
        SpecialProduct.objects.create(name=f"special{i}", price=Decimal(i), category=pens)
    return pens


def _looks(row: models.Model) -> tuple[Any, ...]:
    """Everything a caller can see of a row (Django's pickle adds its version to ``__dict__``)."""
    attributes = [(k, v) for k, v in vars(row).items() if k not in ("_state", "_django_version")]
    state = row._state
    deferred = row.get_deferred_fields()
    return type(row), attributes, state.db, state.adding, state.fields_cache, deferred


def _round_trip(value: Any) -> Any:
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


@pytest.mark.parametrize("shape", ["plain", "deferred", "annotated", "only", "child"])
def test_a_list_packs_and_unpickles_as_django_pickling_does(pens: Category, shape: str) -> None:
    queryset = {
        "plain": Product.objects.order_by("pk"),
        "deferred": Product.objects.order_by("pk").defer("price"),
        "annotated": Product.objects.order_by("pk").annotate(double=F("price") * 2),
        "only": Product.objects.order_by("pk").only("name"),
        "child": SpecialProduct.objects.order_by("pk"),
    }[shape]
    found = list(queryset)
    packed = rows.pack(found)
    assert isinstance(packed, rows.Rows)
    assert [_looks(r) for r in _round_trip(packed)] == [_looks(r) for r in _round_trip(found)]


def test_rows_that_are_not_plain_keep_djangos_pickling(pens: Category) -> None:
    joined = list(Product.objects.select_related("category"))  # related rows on each row
    mixed = [*Product.objects.all()[:1], pens]
    assert rows.pack(joined) is joined
    assert rows.pack(mixed) is mixed
    assert rows.pack([]) == []
    with_bytes = list(Product.objects.all()[:2])
    with_bytes[1].blob = memoryview(b"x")  # type: ignore[attr-defined]
    assert rows.pack(with_bytes) is with_bytes


@isolate_apps("tests.testapp")
def test_a_model_outside_the_app_registry_keeps_djangos_pickling() -> None:
    class Elsewhere(models.Model):
        class Meta:
            app_label = "testapp"

    row = Elsewhere(pk=1)
    row._state.adding = False
    assert rows.pack([row]) == [row]
    assert not isinstance(rows.pack([row]), rows.Rows)


def test_rows_served_from_the_cache_behave_as_rows_from_the_database(pens: Category) -> None:
    read = lambda: list(Product.objects.cached().filter(category=pens).order_by("pk"))  # noqa: E731
    first, _ = db_queries(read)
    served, queries = db_queries(read)
    assert queries == 0
    assert [_looks(r) for r in served] == [_looks(r) for r in first]
    served[0].name = "renamed"
    served[0].save()  # an UPDATE: the row is not "adding"
    assert Product.objects.filter(category=pens).count() == 6
    assert read()[0].name == "renamed"
