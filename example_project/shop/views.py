"""The shop's pages: three public pages cached at every tier, one private account page.

Public pages use ``origin_cache``: for anonymous GETs the middleware sends ``Cache-Control:
public`` and ``Surrogate-Key`` with every key the page's cached queries read. None of them
touches ``request.user`` or the session, which would make the response user-specific (private).
"""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db.models import Avg, Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from django_tiercache import stats
from django_tiercache.decorators import origin_cache, private_cache
from django_tiercache.query import query_results
from shop.models import Category, Product, Review


def all_categories() -> QuerySet[Category]:
    return Category.objects.cached()


def top_products() -> QuerySet[Product]:
    return (
        Product.objects.cached(timeout=60)
        .select_related("category")
        .annotate(review_count=Count("reviews"), rating=Avg("reviews__rating"))
        .order_by("-featured", "-review_count", "name")[:8]
    )


@origin_cache(600, keys=["shop.home"])
def home(request: HttpRequest) -> HttpResponse:
    """Categories and top products, from the query tier (keys: their table keys + shop.home).

    ``shop/warmers.py`` evaluates the same querysets, so ``tiercache_warm --queries`` fills them.
    """
    context = {"categories": all_categories(), "top_products": top_products()}
    return render(request, "shop/home.html", context)


@origin_cache(600)
def category(request: HttpRequest, slug: str) -> HttpResponse:
    """A category and its products: tagged ``shop.product?category_id=<pk>`` (a product saved
    into the category) and with the key of each product shown (one saved or moved out)."""
    try:
        found = Category.objects.cached().get(slug=slug)
    except Category.DoesNotExist:
        raise Http404("No such category") from None
    products = Product.objects.cached().filter(category_id=found.pk).prefetch_related("tags")
    return render(request, "shop/category.html", {"category": found, "products": products})


def _reviews(product_id: int) -> dict[str, Any]:
    reviews = Review.objects.filter(product_id=product_id)
    return {
        "latest": list(reviews[:20]),
        **reviews.aggregate(count=Count("id"), rating=Avg("rating")),
    }


@origin_cache(300)
def product(request: HttpRequest, pk: int) -> HttpResponse:
    """A product page. Lookups by primary key tag the page with object keys only
    (``shop.product:42``, ``shop.category:3``), so saving another product does not purge it."""
    try:
        found = Product.objects.cached().get(pk=pk)
    except Product.DoesNotExist:
        raise Http404("No such product") from None
    found_category = Category.objects.cached().get(pk=found.category_id)
    tags = found.tags.cached()
    # Reviews through the lower-level API, tagged with the product's key: Review is registered
    # with key_factory("shop.product:{obj.product_id}"), so a new review invalidates this entry.
    reviews = query_results.get_or_set(
        f"shop:product-reviews:{pk}",
        lambda: _reviews(pk),
        timeout=300,
        keys=[f"shop.product:{pk}"],
    )
    context = {"product": found, "category": found_category, "tags": tags, "reviews": reviews}
    return render(request, "shop/product.html", context)


@private_cache()
@login_required
def account(request: HttpRequest) -> HttpResponse:
    """Logged-in only; ``Cache-Control: private``, never any edge header."""
    context = {"counters": sorted(stats.snapshot().items())}
    return render(request, "shop/account.html", context)
