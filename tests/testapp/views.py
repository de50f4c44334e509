"""Views for the HTTP-tier tests; mounted under ``/http/`` by ``tests/urls.py``."""

from __future__ import annotations

from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import get_token
from django.urls import path
from django.utils.cache import patch_vary_headers
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.cache import cache_control

from django_tiercache import add_keys, collector
from django_tiercache.http.decorators import no_cache, origin_cache, private_cache


def page_keys(request: HttpRequest, response: HttpResponseBase) -> list[str]:
    return [f"testapp.page:{request.GET.get('page', '1')}"]


@origin_cache(600, keys=["testapp.home", page_keys])
def public(request: HttpRequest) -> HttpResponse:
    add_keys("testapp.product:1")
    # What the query tier does while a cached queryset is evaluated.
    collector.add_normalized(["testapp.category:7", "testapp.product"])
    scope = collector.current()
    if scope is not None:
        scope.hits += 2
        scope.misses += 1
    return HttpResponse("public page")


@origin_cache()
def defaults(request: HttpRequest) -> HttpResponse:
    return HttpResponse("defaults")


@origin_cache(60, keys=["testapp.status"])
def status(request: HttpRequest, code: int) -> HttpResponse:
    return HttpResponse(f"status {code}", status=code)


@origin_cache(60, keys=["testapp.form"])
def form(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"{request.method} done")


@origin_cache(60, keys=["testapp.session"])
def session(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"visits {request.session.get('visits', 0)}")


@origin_cache(60, keys=["testapp.user"])
def user(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello member" if request.user.is_authenticated else "hello visitor")


@origin_cache(60, keys=["testapp.cookie"])
def cookie(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("cookie")
    response.set_cookie("flavour", "oat")
    return response


@origin_cache(60, keys=["testapp.csrf"])
def csrf(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"<input name=csrfmiddlewaretoken value={get_token(request)}>")


@origin_cache(60, keys=["testapp.boom"])
def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


@origin_cache(60, vary_on=["Accept-Language", "origin"])
def vary(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("vary")
    patch_vary_headers(response, ["Origin", "X-Tenant"])
    return response


@origin_cache(60, keys=["testapp.private"])
@cache_control(private=True, max_age=5)
def self_private(request: HttpRequest) -> HttpResponse:
    return HttpResponse("the view said private")


def many_keys(request: HttpRequest, response: HttpResponseBase) -> list[str]:
    """``?objects=N`` object keys of testapp.product, ``?custom=N`` 20-byte non-model keys."""
    objects = int(request.GET.get("objects", "0"))
    custom = int(request.GET.get("custom", "0"))
    return [f"testapp.product:{i}" for i in range(objects)] + [
        f"custom.{i:013d}" for i in range(custom)
    ]


@origin_cache(60, keys=["testapp.list", many_keys])
def keys(request: HttpRequest) -> HttpResponse:
    return HttpResponse("lots of keys")


@origin_cache(60, keys=["a b", "x\r\nInjected: yes", "c,d", "café", "nul\x00l", " "])
def hostile(request: HttpRequest) -> HttpResponse:
    add_keys("q\r\nSet-Cookie: evil=1")
    return HttpResponse("hostile")


def integer_keys(request: HttpRequest, response: HttpResponseBase) -> list[object]:
    return [42]


@origin_cache(60, keys=[integer_keys])  # type: ignore[list-item]
def bad_keys(request: HttpRequest) -> HttpResponse:
    return HttpResponse("never sent")


@origin_cache(60, keys=["testapp.lastmod"])
def lastmod(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("modified long ago")
    response.headers["Last-Modified"] = "Mon, 01 Jan 2024 00:00:00 GMT"
    return response


@origin_cache(60, keys=["testapp.own-etag"])
def own_etag(request: HttpRequest) -> HttpResponse:
    response = HttpResponse("own etag")
    response.headers["ETag"] = '"v1"'
    return response


@origin_cache(60, keys=["testapp.stream"])
def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        yield b"chunk one "
        yield b"chunk two"

    return StreamingHttpResponse(chunks())


@origin_cache(300, keys=["testapp.async"], stale_while_revalidate=5, stale_if_error=None)
async def async_page(request: HttpRequest) -> HttpResponse:
    add_keys("testapp.product:9")
    return HttpResponse("async page")


@private_cache(max_age=30)
def private(request: HttpRequest) -> HttpResponse:
    return HttpResponse("yours only")


@no_cache
def never(request: HttpRequest) -> HttpResponse:
    add_keys("testapp.never")
    return HttpResponse("never stored")


@origin_cache(60, keys=["testapp.stacked"])
@no_cache
def stacked(request: HttpRequest) -> HttpResponse:
    return HttpResponse("most restrictive wins")


def plain(request: HttpRequest) -> HttpResponse:
    add_keys("testapp.plain")
    return HttpResponse("undecorated")


def plain_session(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"visits {request.session.get('visits', 0)}")


@cache_control(public=True, max_age=60, s_maxage=600)
def plain_public_session(request: HttpRequest) -> HttpResponse:
    response = HttpResponse(f"visits {request.session.get('visits', 0)}")
    response.headers["Surrogate-Key"] = "leaked"
    return response


@method_decorator(origin_cache(120, keys=["testapp.cbv"], browser_max_age=10), name="dispatch")
class ProductView(View):
    def get(self, request: HttpRequest, pk: int) -> HttpResponse:
        add_keys(f"testapp.product:{pk}")
        return HttpResponse(f"product {pk}")


urlpatterns = [
    path("public/", public),
    path("defaults/", defaults),
    path("status/<int:code>/", status),
    path("form/", form),
    path("session/", session),
    path("user/", user),
    path("cookie/", cookie),
    path("csrf/", csrf),
    path("boom/", boom),
    path("vary/", vary),
    path("self-private/", self_private),
    path("keys/", keys),
    path("hostile/", hostile),
    path("bad-keys/", bad_keys),
    path("lastmod/", lastmod),
    path("own-etag/", own_etag),
    path("stream/", stream),
    path("async/", async_page),
    path("private/", private),
    path("never/", never),
    path("stacked/", stacked),
    path("plain/", plain),
    path("plain-session/", plain_session),
    path("plain-public-session/", plain_public_session),
    path("product/<int:pk>/", ProductView.as_view()),
]
