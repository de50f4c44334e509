"""A cached queryset behaves as Django's own: each case here is one Django's ORM suite found
(``make django-suite``), kept as a small regression test."""

from __future__ import annotations

from typing import Any

import pytest
from django.apps import apps
from django.db.migrations.state import ProjectState

from django_tiercache.query import CachedQuerySet
from tests.test_query import db_queries
from tests.testapp.models import Category, Product, Tag

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
