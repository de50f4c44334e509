"""URLs of the edge integration tests: a product page opted in to edge caching."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path

from django_tiercache import add_keys
from django_tiercache.http.decorators import origin_cache
from tests.testapp.models import Product


@origin_cache(3600, stale_while_revalidate=0, stale_if_error=0)
def product(request: HttpRequest, pk: int) -> HttpResponse:
    item = get_object_or_404(Product, pk=pk)
    add_keys(*item.surrogate_keys())
    return HttpResponse(item.name, content_type="text/plain")


urlpatterns = [path("product/<int:pk>/", product)]
