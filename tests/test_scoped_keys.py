"""Row keys and scoped list keys: a result depends on the rows it shows, not on whole tables.

Each test checks both tiers: the keys a cached evaluation adds to the response (what the edge is
purged by) and whether the query-tier entry survives a change (a hit: no query) or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import path

from django_tiercache import collector
from django_tiercache.decorators import origin_cache
from django_tiercache.keys import normalize_key, scope_key
from django_tiercache.query import planner
from tests.testapp.models import Book, Category, Product, Shelf, Tag

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def response_keys() -> Iterator[set[str]]:
    """The keys evaluations add to the response being computed (what the middleware sends)."""
    token = collector.begin()
    scope = collector.current()
    assert scope is not None
    try:
        yield scope.keys
    finally:
        collector.end(token)


def queries(evaluate: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as captured:
        evaluate()
    return len(captured)


def selects(run: Callable[[], Any]) -> int:
    with CaptureQueriesContext(connection) as captured:
        run()
    return sum(q["sql"].lstrip().upper().startswith("SELECT") for q in captured)


def cached_keys(evaluate: Callable[[], Any]) -> set[str]:
    """Evaluate until the result is stored (a hit), and return the keys of that hit."""
    evaluate()
    evaluate()
    with response_keys() as keys:
        assert queries(evaluate) == 0, "not stored"
    return set(keys)


def still_cached(evaluate: Callable[[], Any]) -> bool:
    return queries(evaluate) == 0


@pytest.fixture
def shop() -> dict[str, Any]:
    pens, inks = Category.objects.create(name="Pens"), Category.objects.create(name="Inks")
    red, blue, green = (Tag.objects.create(name=n) for n in ("red", "blue", "green"))
    pen = Product.objects.create(name="Pen", category=pens)
    pencil = Product.objects.create(name="Pencil", category=pens)
    ink = Product.objects.create(name="Ink", category=inks)
    pen.tags.add(red)
    pencil.tags.add(blue)
    return locals()


def key(obj: Any) -> str:
    return f"{obj._meta.label_lower}:{obj.pk}"


# -- row keys: lookups by primary key -------------------------------------------------------------


def test_get_by_pk_depends_on_its_row_only(shop: dict[str, Any]) -> None:
    pen = shop["pen"]

    def evaluate() -> Any:
        return Product.objects.cached().get(pk=pen.pk)

    assert cached_keys(evaluate) == {key(pen)}
    shop["pencil"].save()
    assert still_cached(evaluate)
    pen.save()
    assert not still_cached(evaluate)


def test_select_related_adds_the_joined_rows_not_their_tables(shop: dict[str, Any]) -> None:
    pen, pens, inks = shop["pen"], shop["pens"], shop["inks"]

    def evaluate() -> Any:
        return Product.objects.cached().select_related("category").get(pk=pen.pk)

    assert cached_keys(evaluate) == {key(pen), key(pens)}
    inks.save()
    assert still_cached(evaluate)
    pens.name = "Fountain pens"
    pens.save()
    assert evaluate().category.name == "Fountain pens"


def test_a_first_miss_runs_its_query_once_and_is_stored(shop: dict[str, Any]) -> None:
    """The rows' keys are known only after the query: they take their tokens at the store."""
    pen = shop["pen"]

    def evaluate() -> Any:
        return Product.objects.cached().select_related("category").get(pk=pen.pk)

    assert queries(evaluate) == 1
    assert still_cached(evaluate)


def test_a_new_foreign_key_value_covers_the_old_and_the_new_row(shop: dict[str, Any]) -> None:
    pen, pens, inks = shop["pen"], shop["pens"], shop["inks"]

    def evaluate() -> Any:
        return Product.objects.cached().select_related("category").get(pk=pen.pk)

    cached_keys(evaluate)
    pen.category = inks
    pen.save()
    assert evaluate().category == inks  # the object key of the product covered the old row
    assert cached_keys(evaluate) == {key(pen), key(inks)}
    pens.save()
    assert still_cached(evaluate)
    inks.name = "Bottled ink"
    inks.save()
    assert evaluate().category.name == "Bottled ink"


def test_prefetched_rows_add_their_keys(shop: dict[str, Any]) -> None:
    pen, pencil, red, blue, green = (shop[n] for n in ("pen", "pencil", "red", "blue", "green"))

    def evaluate() -> Any:
        rows = Product.objects.cached().filter(pk__in=[pen.pk, pencil.pk]).prefetch_related("tags")
        return [(p.name, [t.name for t in p.tags.all()]) for p in rows]

    assert cached_keys(evaluate) == {key(pen), key(pencil), key(red), key(blue)}
    green.save()
    assert still_cached(evaluate)
    pencil.tags.add(green)  # m2m_changed invalidates the product's object key
    assert dict(evaluate())["Pencil"] == ["blue", "green"]
    assert key(green) in cached_keys(evaluate)
    green.name = "lime"
    green.save()
    assert dict(evaluate())["Pencil"] == ["blue", "lime"]


def test_in_bulk_depends_on_the_rows(shop: dict[str, Any]) -> None:
    pen, ink = shop["pen"], shop["ink"]

    def evaluate() -> Any:
        return Product.objects.cached().select_related("category").in_bulk([pen.pk, ink.pk])

    assert cached_keys(evaluate) == {key(pen), key(ink), key(shop["pens"]), key(shop["inks"])}
    Product.objects.create(name="Brush", category=Category.objects.create(name="Brushes"))
    assert still_cached(evaluate)


def test_reverse_foreign_key_prefetch_is_scoped_by_the_parent(shop: dict[str, Any]) -> None:
    pens = shop["pens"]

    def evaluate() -> Any:
        found = Category.objects.cached().prefetch_related("products").get(pk=pens.pk)
        return sorted(p.name for p in found.products.all())

    keys = cached_keys(evaluate)
    assert keys == {
        key(pens),
        key(shop["pen"]),
        key(shop["pencil"]),
        f"testapp.product?category_id={pens.pk}",
    }
    Product.objects.create(name="Ink 2", category=shop["inks"])
    assert still_cached(evaluate)
    Product.objects.create(name="Marker", category=pens)
    assert evaluate() == ["Marker", "Pen", "Pencil"]


# -- scoped lists ----------------------------------------------------------------------------------


def test_a_list_filtered_by_a_foreign_key_is_scoped(shop: dict[str, Any]) -> None:
    pen, pencil, ink, pens, inks = (shop[n] for n in ("pen", "pencil", "ink", "pens", "inks"))

    def evaluate() -> list[str]:
        return [p.name for p in Product.objects.cached().filter(category=pens).order_by("name")]

    scope = f"testapp.product?category_id={pens.pk}"
    assert cached_keys(evaluate) == {scope, key(pen), key(pencil)}
    ink.save()  # another category's product: neither its scope nor one of the rows
    assert still_cached(evaluate)
    ink.category = pens  # comes in: the scope of its new value
    ink.save()
    assert evaluate() == ["Ink", "Pen", "Pencil"]
    pen.category = inks  # goes out: its own object key
    pen.save()
    assert evaluate() == ["Ink", "Pencil"]
    Product.objects.create(name="Brush", category=pens)
    assert evaluate() == ["Brush", "Ink", "Pencil"]
    pencil.delete()
    assert evaluate() == ["Brush", "Ink"]


def test_a_row_whose_other_condition_changes_comes_in(shop: dict[str, Any]) -> None:
    pens, pencil = shop["pens"], shop["pencil"]

    def evaluate() -> list[str]:
        rows = Product.objects.cached().filter(category=pens, price__gt=10)
        return [p.name for p in rows]

    scope = f"testapp.product?category_id={pens.pk}"
    assert cached_keys(evaluate) == {scope}  # no row yet
    pencil.price = Decimal("12.50")
    pencil.save(update_fields=["price"])  # the category, not written, is read back
    assert evaluate() == ["Pencil"]


def test_the_most_selective_condition_scopes_the_list() -> None:
    shelf = Shelf.objects.create(code="a")
    book = Book.objects.create(title="Dune", shelf=shelf, active=True)

    def evaluate() -> list[str]:
        return [b.title for b in Book.objects.cached().filter(active=True, shelf=shelf)]

    assert cached_keys(evaluate) == {"testapp.book?shelf_id=a", key(book)}
    Book.objects.create(title="Emma", shelf=None, active=True)
    assert still_cached(evaluate)


def test_nullable_foreign_key_scopes_null(shop: dict[str, Any]) -> None:
    shelf = Shelf.objects.create(code="b")
    Book.objects.create(title="Dune", shelf=shelf)

    def evaluate() -> list[str]:
        return [b.title for b in Book.objects.cached().filter(shelf=None)]

    assert cached_keys(evaluate) == {"testapp.book?shelf_id=null"}
    Book.objects.create(title="Emma", shelf=shelf)
    assert still_cached(evaluate)
    shelf.delete()  # SET_NULL: Django updates the books without a signal; they come in
    assert sorted(evaluate()) == ["Dune", "Emma"]


@pytest.mark.skipif(
    connection.vendor not in ("postgresql", "sqlite"), reason="text scopes: PostgreSQL, SQLite"
)
def test_to_field_foreign_key_scopes_the_referenced_value() -> None:
    a, b = Shelf.objects.create(code="a"), Shelf.objects.create(code="b")
    dune = Book.objects.create(title="Dune", shelf=a)

    def evaluate() -> list[str]:
        return [x.title for x in Book.objects.cached().filter(shelf=a).select_related("shelf")]

    assert cached_keys(evaluate) == {"testapp.book?shelf_id=a", key(dune), key(a)}
    Book.objects.create(title="Emma", shelf=b)
    assert still_cached(evaluate)
    emma = Book.objects.get(title="Emma")
    emma.shelf = a
    emma.save()
    assert sorted(evaluate()) == ["Dune", "Emma"]


def test_what_cannot_be_scoped_keeps_the_table_key(shop: dict[str, Any]) -> None:
    pens = shop["pens"]
    product = "testapp.product"
    count = Product.objects.cached().filter(category=pens).count
    with response_keys() as keys:
        count()
    assert product in keys  # a count shows no rows: one going out has no key of its own
    offset = Product.objects.cached().filter(category=pens).order_by("name")[1:]
    with response_keys() as keys:
        list(offset)
    assert product in keys  # a row going out before the offset shifts the page
    by_price = Book.objects.cached().filter(price=Decimal("1.00"))
    with response_keys() as keys:
        list(by_price)
    assert keys == {"testapp.book"}  # decimals: equal values written differently
    with response_keys() as keys:
        list(Book.objects.cached().filter(words=5))
    assert keys == {"testapp.book"}  # neither indexed nor unique: no scope keys to save
    ordered = Product.objects.cached().filter(category=pens).order_by("category__name")
    with response_keys() as keys:
        list(ordered)
    assert product in keys  # the ordering reads another table


def test_text_scopes_only_where_text_equality_is_exact() -> None:
    query = Book.objects.filter(title="Dune").query
    assert planner.plan(query, (), (), "n", rows=True, vendor="sqlite").tags == (
        "testapp.book?title=Dune",
    )
    assert planner.plan(query, (), (), "n", rows=True, vendor="mysql").tags == ("testapp.book",)


# -- writes without the model's own keys: one read -------------------------------------------------


@pytest.fixture
def library() -> dict[str, Any]:
    a, b = Shelf.objects.create(code="a"), Shelf.objects.create(code="b")
    books = [Book.objects.create(title=t, shelf=a, pages=10) for t in ("Dune", "Emma")]
    return {"a": a, "b": b, "books": books}


def titles_on(shelf: Shelf) -> Callable[[], list[str]]:
    return lambda: sorted(b.title for b in Book.objects.cached().filter(shelf=shelf))


def test_update_invalidates_old_and_new_scopes_reading_once(library: dict[str, Any]) -> None:
    on_a, on_b = titles_on(library["a"]), titles_on(library["b"])
    cached_keys(on_a), cached_keys(on_b)
    dune = library["books"][0]
    assert selects(lambda: Book.objects.filter(pk=dune.pk).update(shelf=library["b"])) == 1
    assert on_a() == ["Emma"]
    assert on_b() == ["Dune"]


def test_update_with_an_expression_reads_the_new_values(library: dict[str, Any]) -> None:
    def with_eleven_pages() -> list[str]:
        return sorted(b.title for b in Book.objects.cached().filter(pages=11))

    cached_keys(with_eleven_pages)
    Book.objects.filter(title="Dune").update(pages=F("pages") + 1)
    assert with_eleven_pages() == ["Dune"]


def test_bulk_update_invalidates_without_reading_what_it_wrote(library: dict[str, Any]) -> None:
    on_a, on_b = titles_on(library["a"]), titles_on(library["b"])
    cached_keys(on_a), cached_keys(on_b)
    books = library["books"]
    for book in books:
        book.shelf = library["b"]
    every_scoped_field = ["title", "shelf", "active", "pages"]
    assert selects(lambda: Book.objects.bulk_update(books, every_scoped_field)) == 0
    assert on_a() == []
    assert on_b() == ["Dune", "Emma"]
    books[0].price = Decimal("3.00")
    assert selects(lambda: Book.objects.bulk_update(books[:1], ["price"])) == 1  # the others


def test_bulk_create_invalidates_the_new_rows_scopes(library: dict[str, Any]) -> None:
    on_b = titles_on(library["b"])
    cached_keys(on_b)
    Book.objects.bulk_create([Book(title="Ulysses", shelf=library["b"])])
    assert on_b() == ["Ulysses"]


# -- the same keys on the response -----------------------------------------------------------------


@origin_cache(600)
def category_page(request: HttpRequest, pk: int) -> HttpResponse:
    names = [p.name for p in Product.objects.cached().filter(category_id=pk).order_by("name")]
    return HttpResponse(", ".join(names))


urlpatterns = [path("category/<int:pk>/", category_page)]


@pytest.mark.urls(__name__)
def test_the_response_carries_the_query_tier_keys(client: Any, shop: dict[str, Any]) -> None:
    pens = shop["pens"]
    headers = []
    for _ in range(3):  # a miss, the keyed recompute stored, then hits
        response = client.get(f"/category/{pens.pk}/")
        headers.append(response.headers["Surrogate-Key"])
    expected = {f"testapp.product?category_id={pens.pk}", key(shop["pen"]), key(shop["pencil"])}
    assert all(set(header.split()) == expected for header in headers)
    assert response.headers["Cache-Tag"] == ",".join(sorted(expected))


def test_a_read_that_bypasses_the_cache_carries_its_rows_keys(shop: dict[str, Any]) -> None:
    pens = shop["pens"]
    with response_keys() as keys, transaction.atomic():
        list(Product.objects.cached().select_for_update().filter(category=pens))
    assert keys == {f"testapp.product?category_id={pens.pk}", key(shop["pen"]), key(shop["pencil"])}


def test_scope_keys_are_normalised_keys() -> None:
    field = Book._meta.get_field("title")
    assert scope_key(field, "War, and Peace") == "testapp.book?title=War%2C%20and%20Peace"
    long_key = scope_key(field, "x" * 2000)
    assert len(long_key) <= 1024
    assert normalize_key(long_key) == long_key
