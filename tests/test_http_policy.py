"""Who gets a public, edge-cacheable response and who never does (TierCacheMiddleware policy)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from django_tiercache import collector

EDGE_HEADERS = ("Surrogate-Control", "Surrogate-Key", "Cache-Tag", "xkey")


def assert_public(response: Any, edge: int, browser: int = 0) -> None:
    assert response["Cache-Control"] == f"public, max-age={browser}, s-maxage={edge}"
    assert response["Surrogate-Control"].startswith(f"max-age={edge}")


def assert_not_edge_cached(response: Any) -> None:
    cache_control = response.get("Cache-Control", "")
    assert "public" not in cache_control
    assert "s-maxage" not in cache_control
    for header in EDGE_HEADERS:
        assert header not in response, header


def test_anonymous_get_is_public_with_keys_from_view_callables_add_keys_and_queries(
    client: Client,
) -> None:
    response = client.get("/http/public/?page=3")

    assert response.status_code == 200
    assert response["Cache-Control"] == "public, max-age=0, s-maxage=600"
    assert response["Surrogate-Control"] == (
        "max-age=600, stale-while-revalidate=60, stale-if-error=86400"
    )
    keys = [
        "testapp.category:7",  # collected by the query tier
        "testapp.home",  # static key
        "testapp.page:3",  # key callable
        "testapp.product",  # collected by the query tier
        "testapp.product:1",  # add_keys()
    ]
    assert response["Surrogate-Key"] == " ".join(keys)
    assert response["Cache-Tag"] == ",".join(keys)
    assert "xkey" not in response
    assert response["Vary"] == "Accept-Encoding"


def test_head_is_public_like_get(client: Client) -> None:
    response = client.head("/http/public/")

    assert_public(response, edge=600)
    assert "testapp.home" in response["Surrogate-Key"].split(" ")


def test_each_request_has_its_own_scope(client: Client) -> None:
    client.get("/http/product/1/")
    response = client.get("/http/product/2/")

    assert response["Surrogate-Key"] == "testapp.cbv testapp.product:2"
    assert collector.current() is None


@pytest.mark.django_db
def test_logged_in_user_gets_private_without_edge_headers(client: Client) -> None:
    client.force_login(User.objects.create_user("ada", password="x"))

    response = client.get("/http/user/")

    assert response.content == b"hello member"
    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)
    assert response["Vary"] == "Cookie, Accept-Encoding"


@pytest.mark.django_db
def test_anonymous_view_that_reads_the_user_is_private_too(client: Client) -> None:
    # Loading request.user reads the session: the page may differ per visitor.
    response = client.get("/http/user/")

    assert response.content == b"hello visitor"
    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)


@pytest.mark.django_db
def test_logged_in_request_to_a_view_that_never_looks_at_the_user_stays_public(
    client: Client,
) -> None:
    client.force_login(User.objects.create_user("ada", password="x"))

    response = client.get("/http/public/")

    assert_public(response, edge=600)


def test_session_touched_is_private(client: Client) -> None:
    response = client.get("/http/session/")

    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)
    assert response["Vary"] == "Cookie, Accept-Encoding"


def test_set_cookie_downgrades_origin_cache_to_private_and_logs(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_tiercache.http.middleware"):
        response = client.get("/http/cookie/")

    assert response.cookies["flavour"].value == "oat"
    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)
    assert "tests.testapp.views.cookie downgraded to private" in caplog.text


def test_csrf_token_in_page_is_private_and_varies_on_cookie(client: Client) -> None:
    response = client.get("/http/csrf/")

    assert "csrftoken" in response.cookies
    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)
    assert response["Vary"] == "Cookie, Accept-Encoding"


def test_authorization_header_is_private(client: Client) -> None:
    response = client.get("/http/public/", headers={"Authorization": "Bearer s3cret"})

    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)


@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_unsafe_methods_are_private(client: Client, method: str) -> None:
    response = getattr(client, method)("/http/form/")

    assert response.content == f"{method.upper()} done".encode()
    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)
    assert "ETag" not in response


@pytest.mark.parametrize("code", [200, 203, 300, 301, 404, 410])
def test_cacheable_statuses_are_public(client: Client, code: int) -> None:
    response = client.get(f"/http/status/{code}/")

    assert response.status_code == code
    assert_public(response, edge=60)
    assert response["Surrogate-Key"] == "testapp.status"


@pytest.mark.parametrize("code", [201, 204, 302, 400, 500, 503])
def test_other_statuses_are_private(client: Client, code: int) -> None:
    response = client.get(f"/http/status/{code}/")

    assert response.status_code == code
    assert response["Cache-Control"] == "private"
    assert_not_edge_cached(response)


def test_cacheable_statuses_setting(client: Client, settings: Any) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "HTTP": {"CACHEABLE_STATUSES": [200, 201]}}

    assert_public(client.get("/http/status/201/"), edge=60)
    assert_not_edge_cached(client.get("/http/status/404/"))


def test_view_raising_gives_a_500_that_is_never_edge_cached() -> None:
    response = Client(raise_request_exception=False).get("/http/boom/")

    assert response.status_code == 500
    assert_not_edge_cached(response)


def test_view_that_said_private_itself_stays_private(client: Client) -> None:
    response = client.get("/http/self-private/")

    assert response["Cache-Control"] == "private, max-age=5"
    assert_not_edge_cached(response)


def test_private_cache(client: Client) -> None:
    response = client.get("/http/private/")

    assert response["Cache-Control"] == "private, max-age=30"
    assert_not_edge_cached(response)


def test_no_cache_is_no_store_and_drops_added_keys(client: Client) -> None:
    response = client.get("/http/never/")

    assert response["Cache-Control"] == "max-age=0, no-cache, no-store, must-revalidate, private"
    assert_not_edge_cached(response)
    assert "ETag" not in response


def test_most_restrictive_stacked_decorator_wins(client: Client) -> None:
    response = client.get("/http/stacked/")

    assert "no-store" in response["Cache-Control"]
    assert_not_edge_cached(response)


def test_undecorated_anonymous_view_is_left_alone(client: Client) -> None:
    response = client.get("/http/plain/")

    assert "Cache-Control" not in response
    assert "Vary" not in response
    assert "ETag" not in response
    assert_not_edge_cached(response)  # add_keys() alone never opts in


def test_undecorated_view_that_touches_the_session_becomes_private(client: Client) -> None:
    response = client.get("/http/plain-session/")

    assert response["Cache-Control"] == "private"
    assert response["Vary"] == "Cookie"


def test_undecorated_public_response_that_touched_the_session_is_downgraded_and_logged(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="django_tiercache.http.middleware"):
        response = client.get("/http/plain-public-session/")

    assert response["Cache-Control"] == "max-age=60, private"
    assert_not_edge_cached(response)
    assert "/http/plain-public-session/ was public but the session was accessed" in caplog.text


@pytest.mark.django_db
def test_admin_pages_keep_their_never_cache_headers(client: Client) -> None:
    response = client.get("/admin/login/")

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert_not_edge_cached(response)
