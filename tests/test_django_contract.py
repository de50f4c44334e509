"""What django_tiercache assumes about Django's private QuerySet API, checked on plain querysets.

The query tier plugs into ``QuerySet`` where Django has no public hook (see the comment above
``CachedQuerySet``'s declarations in ``django_tiercache/query/querysets.py``). Each test here
states one assumption, so a Django release that changes it fails here, by name, on every Django
in tox.ini.
"""

from __future__ import annotations

import pickle
from typing import Any

import django
import pytest
from django.db import router
from django.db.models import Prefetch, QuerySet
from django.db.models.query import FlatValuesListIterable, ModelIterable, ValuesIterable

from django_tiercache.query.querysets import CachedQuerySet
from tests.testapp.models import Category, Product, Tag

FETCH_MODES = django.VERSION >= (6, 1)
needs_fetch_modes = pytest.mark.skipif(
    not FETCH_MODES, reason=f"fetch modes are new in Django 6.1 (this is {django.__version__})"
)

#: Every attribute a new QuerySet has (Django's __init__); _record() copies what _clone() does.
STATE = {
    "model",
    "_db",
    "_hints",
    "_query",
    "_result_cache",
    "_sticky_filter",
    "_for_write",
    "_prefetch_related_lookups",
    "_prefetch_done",
    "_known_related_objects",
    "_iterable_class",
    "_fields",
    "_defer_next_filter",
    "_deferred_filter",
    *(("_fetch_mode", "_cloning_enabled") if FETCH_MODES else ()),
}
#: What Django's _clone() carries over to the copy.
CLONED = {
    "_db",
    "_hints",
    "_sticky_filter",
    "_for_write",
    "_prefetch_related_lookups",
    "_known_related_objects",
    "_iterable_class",
    "_fields",
    *(("_fetch_mode",) if FETCH_MODES else ()),
}


def _marked(qs: QuerySet[Any]) -> QuerySet[Any]:
    """``qs`` with a distinctive value in each attribute _clone() copies."""
    qs._db = "default"
    qs._hints = {"instance": "marker"}
    qs._for_write = True
    qs._prefetch_related_lookups = ("tags",)
    qs._known_related_objects = {"field": {1: "marker"}}
    qs._iterable_class = ValuesIterable
    qs._fields = ("name",)
    if FETCH_MODES:
        from django.db.models import FETCH_PEERS

        qs._fetch_mode = FETCH_PEERS  # type: ignore[attr-defined]
    return qs


def test_a_queryset_has_exactly_the_state_we_know() -> None:
    """A new attribute may be state that _record() must copy, as _fetch_mode was in 6.1."""
    assert set(vars(QuerySet(Product))) == STATE


def test_clone_copies_what_record_copies() -> None:
    original = _marked(QuerySet(Product))
    clone: Any = original._clone()  # type: ignore[attr-defined]
    copied = {name for name in STATE if getattr(clone, name, None) == getattr(original, name)}
    assert copied - {"model", "_defer_next_filter", "_deferred_filter", "_result_cache"} == (
        CLONED | {"_prefetch_done"} | ({"_cloning_enabled"} if FETCH_MODES else set())
    )
    assert clone._query is not original._query  # chained


def test_record_copies_what_clone_copies() -> None:
    lazy: Any = _marked(Product.objects.cached().filter(name="a"))
    recorded, cloned = lazy._record(), CachedQuerySet._clone(lazy)
    for name in CLONED:
        assert getattr(recorded, name) == getattr(cloned, name), name


def test_clone_reads_the_query_property() -> None:
    """Our _clone() relies on it to apply recorded operations before Django copies the query."""
    reads = []

    class Counting(QuerySet[Any]):
        @property
        def query(self) -> Any:
            reads.append(1)
            return self._query  # type: ignore[attr-defined]

    Counting(Product)._clone()  # type: ignore[attr-defined]
    assert reads


@pytest.mark.parametrize(
    "chain",
    [
        lambda qs: qs.all(),
        lambda qs: qs.filter(name="a"),
        lambda qs: qs.order_by("name"),
        lambda qs: qs.values("name"),
        lambda qs: qs.select_related("category"),
        lambda qs: qs.prefetch_related("tags"),
    ],
)
def test_every_chained_copy_goes_through_clone(chain: Any) -> None:
    clones = []

    class Counting(QuerySet[Any]):
        def _clone(self) -> Any:
            clones.append(1)
            return super()._clone()  # type: ignore[misc]

    chain(Counting(Product))
    assert clones


class _Served(QuerySet[Any]):
    """A queryset that serves its evaluations from ``served`` instead of the database."""

    served: list[Any] = []

    def _fetch_all(self) -> None:
        if self._result_cache is None:  # type: ignore[attr-defined]
            self._result_cache = list(self.served)
            self._prefetch_done = True
        super()._fetch_all()  # type: ignore[misc]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "evaluate",
    [list, len, bool, lambda qs: qs[0], lambda qs: qs.get(), lambda qs: qs.first(), iter],
)
def test_fetch_all_is_where_evaluations_read_rows(
    evaluate: Any, django_assert_num_queries: Any
) -> None:
    product = Product(pk=7, name="served")
    _Served.served = [product]
    queryset = _Served(Product).prefetch_related("tags")  # _prefetch_done skips the prefetch
    with django_assert_num_queries(0):
        result = evaluate(queryset)
        result = list(result) if hasattr(result, "__next__") else result
    assert result in ([product], 1, True, product)


@pytest.mark.django_db
def test_result_cache_is_filled_by_evaluation() -> None:
    queryset = Product.objects.all()
    assert queryset._result_cache is None  # type: ignore[attr-defined]
    list(queryset)
    assert queryset._result_cache == []  # type: ignore[attr-defined]


@pytest.mark.django_db
def test_iterable_class_yields_the_rows_and_fields_name_them() -> None:
    category = Category.objects.create(name="c")
    Product.objects.create(name="a", category=category)
    values: Any = Product.objects.values("name")
    assert values._iterable_class is ValuesIterable
    assert values._fields == ("name",)
    flat: Any = Product.objects.values_list("name", flat=True)
    assert flat._iterable_class is FlatValuesListIterable
    plain: Any = Product.objects.all()
    assert plain._iterable_class is ModelIterable
    assert plain._fields is None
    assert list(values._iterable_class(values)) == [{"name": "a"}]


@pytest.mark.django_db
def test_known_related_objects_point_rows_at_the_callers_instance() -> None:
    category = Category.objects.create(name="c")
    Product.objects.create(name="a", category=category)
    related: Any = category.products.all()
    field = Product._meta.get_field("category")
    assert related._known_related_objects == {field: {category.pk: category}}
    assert related._hints == {"instance": category}
    assert next(iter(related)).category is category


def test_db_hints_and_for_write_choose_the_database() -> None:
    plain: Any = Product.objects.all()
    assert plain._db is None
    assert plain._hints == {}
    assert plain._for_write is False
    assert Product.objects.using("default")._db == "default"  # type: ignore[attr-defined]
    assert Product.objects.select_for_update()._for_write is True  # type: ignore[attr-defined]
    plain._for_write = True
    assert plain.db == router.db_for_write(Product)


@pytest.mark.django_db
def test_related_managers_defer_a_filter_that_query_applies() -> None:
    """A deferred filter is applied by the ``query`` property: _lazy_base() must not record."""
    product = Product.objects.create(name="a", category=Category.objects.create(name="c"))
    related: Any = product.tags.all()
    assert related._deferred_filter is not None
    assert related._query is not None
    assert "testapp_product_tags" in str(related.query)
    assert related._deferred_filter is None


def test_sticky_filter_is_reset_by_the_next_chain() -> None:
    queryset: Any = Product.objects.all()
    assert queryset._sticky_filter is False
    sticky = queryset._next_is_sticky()
    assert sticky._sticky_filter is True
    assert sticky.filter(name="a")._sticky_filter is False


@pytest.mark.parametrize("negate", [False, True])
def test_filter_or_exclude_inplace_is_filter_in_place(negate: bool) -> None:
    queryset: Any = Product.objects.all()
    before = queryset._query
    queryset._query = queryset._query.chain()
    queryset._filter_or_exclude_inplace(negate, (), {"name": "a"})
    expected = Product.objects.exclude(name="a") if negate else Product.objects.filter(name="a")
    assert str(queryset.query) == str(expected.query)
    assert str(before) == str(Product.objects.all().query)


def test_query_property_returns_query_and_its_setter_sets_values_iterable() -> None:
    queryset: Any = Product.objects.all()
    assert queryset.query is queryset._query
    target: Any = Product.objects.all()
    target.query = Product.objects.values("name").query
    assert target._iterable_class is ValuesIterable


def test_prefetch_related_lookups_hold_the_lookups_and_nested_prefetches() -> None:
    inner: Any = Tag.objects.prefetch_related("products")
    queryset: Any = Product.objects.prefetch_related("category", Prefetch("tags", inner))
    lookups = queryset._prefetch_related_lookups
    assert lookups[0] == "category"
    assert lookups[1].queryset._prefetch_related_lookups == ("products",)


@needs_fetch_modes
@pytest.mark.django_db
def test_fetch_mode_is_kept_per_queryset_and_per_row() -> None:
    from django.db.models import FETCH_PEERS, FETCH_RAISE

    category = Category.objects.create(name="c")
    for name in "ab":
        Product.objects.create(name=name, category=category)
    queryset: Any = Product.objects.fetch_mode(FETCH_RAISE)  # type: ignore[attr-defined]
    assert queryset._fetch_mode is FETCH_RAISE
    assert all(row._state.fetch_mode is FETCH_RAISE for row in queryset)
    peers: Any = list(Product.objects.fetch_mode(FETCH_PEERS))  # type: ignore[attr-defined]
    assert FETCH_PEERS.track_peers
    assert not FETCH_RAISE.track_peers
    assert [ref() for ref in peers[0]._state.peers] == peers
    again = pickle.loads(pickle.dumps(peers[0]))
    assert again._state.fetch_mode is FETCH_PEERS
    assert again._state.peers == ()
