"""A small site for the ``tiercache_warm`` tests: pages with cache headers and a sitemap index."""

from __future__ import annotations

import gzip

from django.http import HttpRequest, HttpResponse
from django.urls import path

#: The User-Agent of every request the site received, oldest first.
user_agents: list[str] = []

PAGES = ("/page/hit/", "/page/miss/", "/page/plain/")


def _urlset(request: HttpRequest, paths: tuple[str, ...]) -> bytes:
    entries = "".join(
        f"<url><loc>{request.build_absolute_uri(p)}</loc>"
        f"<image:image><image:loc>{request.build_absolute_uri('/img.png')}</image:loc>"
        "</image:image></url>"
        for p in paths
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
        'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">'
        f"{entries}</urlset>"
    ).encode()


def sitemap_index(request: HttpRequest) -> HttpResponse:
    entries = "".join(
        f"<sitemap><loc>{request.build_absolute_uri(p)}</loc></sitemap>"
        for p in ("/sitemap-pages.xml", "/sitemap-more.xml.gz", "/sitemap-pages.xml")
    )
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"{entries}</sitemapindex>"
    )
    return HttpResponse(body, content_type="application/xml")


def sitemap_pages(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_urlset(request, PAGES[:2]), content_type="application/xml")


def sitemap_more(request: HttpRequest) -> HttpResponse:
    """A gzipped sitemap file (``.xml.gz``), served as is."""
    body = gzip.compress(_urlset(request, (PAGES[2], "/page/broken/")))
    return HttpResponse(body, content_type="application/gzip")


def not_xml(request: HttpRequest) -> HttpResponse:
    return HttpResponse("<html><body>not a sitemap", content_type="text/html")


def page(request: HttpRequest, kind: str) -> HttpResponse:
    user_agents.append(request.headers.get("User-Agent", ""))
    if kind == "broken":
        return HttpResponse("boom", status=500)
    response = HttpResponse(f"page {kind}")
    if kind == "hit":
        response["X-Cache"] = "MISS, HIT"
    elif kind == "miss":
        response["Age"] = "0"
    return response


urlpatterns = [
    path("sitemap.xml", sitemap_index),
    path("sitemap-pages.xml", sitemap_pages),
    path("sitemap-more.xml.gz", sitemap_more),
    path("not-a-sitemap.xml", not_xml),
    path("page/<str:kind>/", page),
]
