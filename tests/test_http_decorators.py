"""Decorators on function, async and class-based views; bad keys; the middleware in both modes."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory

from django_tiercache.http.decorators import get_policy, origin_cache, private_cache
from django_tiercache.http.middleware import TierCacheMiddleware


def view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def test_non_string_static_key_is_a_type_error_naming_the_view() -> None:
    with pytest.raises(TypeError, match=r"origin_cache on tests\.test_http_decorators\.view"):
        origin_cache(60, keys=["ok", 42])(view)  # type: ignore[list-item]


def test_a_string_instead_of_a_list_of_keys_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"view: keys must be a list of keys, not a string"):
        origin_cache(60, keys="shop.home")(view)


def test_empty_key_is_a_value_error_naming_the_view() -> None:
    with pytest.raises(ValueError, match=r"origin_cache on tests\.test_http_decorators\.view"):
        origin_cache(60, keys=[""])(view)


def test_negative_seconds_are_refused() -> None:
    with pytest.raises(ValueError, match=r"seconds of tests\.test_http_decorators\.view"):
        origin_cache(-1)(view)
    with pytest.raises(ValueError, match=r"max_age of tests\.test_http_decorators\.view"):
        private_cache(max_age=-5)(view)


def test_key_callable_returning_a_non_string_is_a_type_error_naming_the_view(
    client: Client,
) -> None:
    with pytest.raises(TypeError, match=r"origin_cache on tests\.testapp\.views\.bad_keys.*int"):
        client.get("/http/bad-keys/")


def test_key_callable_returning_a_string_is_a_type_error() -> None:
    decorated = origin_cache(60, keys=[lambda request, response: "one.key"])(view)

    with pytest.raises(TypeError, match=r"returned the string 'one\.key'"):
        decorated(RequestFactory().get("/"))


def test_decorated_view_keeps_its_name_and_records_its_policy() -> None:
    decorated = origin_cache(60, keys=["b", "a"], vary_on=["Accept-Language"])(view)

    response = decorated(RequestFactory().get("/"))

    assert decorated.__name__ == "view"
    policy = get_policy(response)
    assert policy is not None
    assert policy.kind == "origin"
    assert policy.keys == {"a", "b"}
    assert policy.vary_on == ("Accept-Language",)


def test_origin_cache_without_the_middleware_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    decorated = origin_cache(60)(view)

    with caplog.at_level(logging.WARNING, logger="django_tiercache.http.decorators"):
        decorated(RequestFactory().get("/"))
        decorated(RequestFactory().get("/"))

    assert caplog.text.count("TierCacheMiddleware is not in MIDDLEWARE") == 1


def test_async_view_keeps_being_a_coroutine_function() -> None:
    async def async_view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    assert iscoroutinefunction(origin_cache(60)(async_view))
    assert iscoroutinefunction(private_cache()(async_view))


def test_async_view_through_the_sync_middleware(client: Client) -> None:
    response = client.get("/http/async/")

    assert response.content == b"async page"
    assert response["Cache-Control"] == "public, max-age=0, s-maxage=300"
    assert response["Surrogate-Control"] == (
        "max-age=300, stale-while-revalidate=5, stale-if-error=86400"
    )
    assert response["Surrogate-Key"] == "testapp.async testapp.product:9"


def test_async_view_through_the_async_middleware() -> None:
    response = async_to_sync(AsyncClient().get)("/http/async/")

    assert response.content == b"async page"
    assert response["Surrogate-Key"] == "testapp.async testapp.product:9"
    assert response["Cache-Tag"] == "testapp.async,testapp.product:9"
    assert response["ETag"].startswith('"')


def test_async_stack_keeps_cookies_private() -> None:
    response = async_to_sync(AsyncClient().get)("/http/cookie/")

    assert response["Cache-Control"] == "private"
    assert "Surrogate-Key" not in response


def test_async_stack_collects_keys_from_sync_views() -> None:
    response = async_to_sync(AsyncClient().get)("/http/public/")

    assert response["Surrogate-Key"] == (
        "testapp.category:7 testapp.home testapp.page:1 testapp.product testapp.product:1"
    )


def test_async_stack_304() -> None:
    client = AsyncClient()
    etag = async_to_sync(client.get)("/http/async/")["ETag"]

    response = async_to_sync(client.get)("/http/async/", headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert response["Surrogate-Key"] == "testapp.async testapp.product:9"


def test_class_based_view_with_method_decorator(client: Client) -> None:
    response = client.get("/http/product/7/")

    assert response.content == b"product 7"
    assert response["Cache-Control"] == "public, max-age=10, s-maxage=120"
    assert response["Surrogate-Key"] == "testapp.cbv testapp.product:7"


def test_middleware_is_sync_and_async_capable() -> None:
    def get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    async def aget_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert TierCacheMiddleware.sync_capable
    assert TierCacheMiddleware.async_capable
    assert not iscoroutinefunction(TierCacheMiddleware(get_response))
    assert iscoroutinefunction(TierCacheMiddleware(aget_response))


def test_middleware_in_async_mode_closes_its_scope() -> None:
    from django_tiercache import add_keys, collector

    async def aget_response(request: HttpRequest) -> HttpResponse:
        add_keys("inside")
        return origin_cache(60)(view)(request)

    middleware: Any = TierCacheMiddleware(aget_response)
    response = async_to_sync(middleware)(RequestFactory().get("/"))

    assert response["Surrogate-Key"] == "inside"
    assert collector.current() is None
