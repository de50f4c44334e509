"""Exact header formats, settings, key-size degradation, hostile keys, Vary, ETag/304."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.http import HttpResponse
from django.test import Client, override_settings

from django_tiercache.http.headers import (
    collapse_object_keys,
    fit_keys,
    key_header_bytes,
    make_private,
    surrogate_control,
)
from django_tiercache.keys import normalize_key

EDGE_HEADERS = ("Surrogate-Control", "Surrogate-Key", "Cache-Tag", "xkey")


def http_settings(settings: Any, **http: Any) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "HTTP": http}


# -- formats ------------------------------------------------------------------------------------


def test_key_header_bytes_counts_each_key_once() -> None:
    keys = ["b", "a:2", "a", "b", "a:10"]

    assert key_header_bytes(keys) == len("a a:10 a:2 b")
    assert key_header_bytes([]) == 0


def test_surrogate_control_leaves_out_unset_stale_windows() -> None:
    assert surrogate_control(60, 5, 10) == "max-age=60, stale-while-revalidate=5, stale-if-error=10"
    assert surrogate_control(60, None, None) == "max-age=60"


def test_make_private_drops_shared_directives_and_edge_headers() -> None:
    response = HttpResponse()
    response.headers["Cache-Control"] = "public, max-age=60, s-maxage=600, must-revalidate"
    response.headers["Surrogate-Key"] = "a"
    response.headers["Surrogate-Control"] = "max-age=600"

    make_private(response)

    assert response["Cache-Control"] == "max-age=60, must-revalidate, private"
    assert "Surrogate-Key" not in response
    assert "Surrogate-Control" not in response


def test_http_settings_change_the_headers(client: Client, settings: Any) -> None:
    http_settings(
        settings,
        BROWSER_MAX_AGE=30,
        EDGE_MAX_AGE=900,
        STALE_WHILE_REVALIDATE=None,
        STALE_IF_ERROR=10,
    )

    response = client.get("/http/defaults/")

    assert response["Cache-Control"] == "public, max-age=30, s-maxage=900"
    assert response["Surrogate-Control"] == "max-age=900, stale-if-error=10"


def test_decorator_arguments_win_over_settings(client: Client, settings: Any) -> None:
    http_settings(settings, BROWSER_MAX_AGE=30, STALE_WHILE_REVALIDATE=1)

    response = client.get("/http/product/3/")  # origin_cache(120, browser_max_age=10)
    assert response["Cache-Control"] == "public, max-age=10, s-maxage=120"
    assert response["Surrogate-Control"] == (
        "max-age=120, stale-while-revalidate=1, stale-if-error=86400"
    )


def test_no_keys_means_no_key_headers(client: Client) -> None:
    response = client.get("/http/defaults/")

    assert response["Cache-Control"] == "public, max-age=0, s-maxage=3600"
    assert "Surrogate-Key" not in response
    assert "Cache-Tag" not in response


@pytest.mark.parametrize(
    ("key_headers", "expected"),
    [
        (["xkey"], {"xkey": "testapp.cbv testapp.product:4"}),
        (["cache-tag"], {"Cache-Tag": "testapp.cbv,testapp.product:4"}),
        (
            ["Surrogate-Key", "Cache-Tag", "xkey"],
            {
                "Surrogate-Key": "testapp.cbv testapp.product:4",
                "Cache-Tag": "testapp.cbv,testapp.product:4",
                "xkey": "testapp.cbv testapp.product:4",
            },
        ),
        ([], {}),
    ],
)
def test_key_headers_setting_selects_the_headers(
    client: Client, key_headers: list[str], expected: dict[str, str]
) -> None:
    with override_settings(TIERCACHE={"HTTP": {"KEY_HEADERS": key_headers}}):
        response = client.get("/http/product/4/")

    assert response["Cache-Control"] == "public, max-age=10, s-maxage=120"
    assert {h: response[h] for h in ("Surrogate-Key", "Cache-Tag", "xkey") if h in response} == (
        expected
    )


# -- size limits --------------------------------------------------------------------------------


def test_collapse_only_touches_object_keys_of_installed_models() -> None:
    keys = {"testapp.product:1", "testapp.product:2", "auth.user:5", "shop.home:2", "reviews"}

    assert collapse_object_keys(keys) == {"testapp.product", "auth.user", "shop.home:2", "reviews"}


def test_fit_keys_boundary() -> None:
    keys = {"testapp.product:1", "testapp.product:2"}
    size = key_header_bytes(keys)

    assert fit_keys(keys, size) == keys
    assert fit_keys(keys, size - 1) == {"testapp.product"}
    assert fit_keys({"custom.a", "custom.b"}, 3) is None


def test_keys_exactly_at_the_limit_are_sent_as_they_are(client: Client, settings: Any) -> None:
    expected = " ".join(sorted(["testapp.list", *(f"testapp.product:{i}" for i in range(60))]))
    assert len(expected) > 1024
    http_settings(settings, MAX_KEY_HEADER_BYTES=len(expected))

    response = client.get("/http/keys/?objects=60")

    assert response["Surrogate-Key"] == expected
    assert response["Cache-Tag"] == expected.replace(" ", ",")


def test_keys_over_the_limit_collapse_to_table_keys(client: Client, settings: Any) -> None:
    expected = " ".join(sorted(["testapp.list", *(f"testapp.product:{i}" for i in range(60))]))
    http_settings(settings, MAX_KEY_HEADER_BYTES=len(expected) - 1)

    response = client.get("/http/keys/?objects=60&custom=3")

    assert response["Cache-Control"] == "public, max-age=0, s-maxage=60"
    assert response["Surrogate-Key"] == (
        "custom.0000000000000 custom.0000000000001 custom.0000000000002 "
        "testapp.list testapp.product"
    )
    assert response["Cache-Tag"] == response["Surrogate-Key"].replace(" ", ",")


def test_keys_too_long_even_collapsed_are_not_edge_cached_and_logged(
    client: Client, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    http_settings(settings, MAX_KEY_HEADER_BYTES=1024)

    with caplog.at_level(logging.WARNING, logger="django_tiercache.http.middleware"):
        response = client.get("/http/keys/?objects=500&custom=60")  # 60 x 21 bytes > 1024

    assert response.status_code == 200
    assert response["Cache-Control"] == "private"
    for header in EDGE_HEADERS:
        assert header not in response
    assert "Not edge-caching /http/keys/ (tests.testapp.views.keys): 561 keys" in caplog.text


def test_huge_key_set_with_default_limit_degrades_without_error(client: Client) -> None:
    response = client.get("/http/keys/?objects=5000")

    assert response.status_code == 200
    assert response["Surrogate-Key"] == "testapp.list testapp.product"


# -- hostile keys -------------------------------------------------------------------------------


def test_hostile_keys_are_normalised_and_cannot_inject_headers(client: Client) -> None:
    response = client.get("/http/hostile/")

    expected = sorted(
        [
            "%20",
            "a%20b",
            "c%2Cd",
            "caf%C3%A9",
            "nul%00l",
            "q%0D%0ASet-Cookie:%20evil=1",
            "x%0D%0AInjected:%20yes",
        ]
    )
    assert response["Surrogate-Key"] == " ".join(expected)
    assert response["Cache-Tag"] == ",".join(expected)
    assert "Injected" not in response
    assert not response.cookies
    for value in response.headers.values():
        assert not {"\r", "\n", "\x00"} & set(value)
    # A key copied from the header purges exactly this response.
    assert [normalize_key(key) for key in expected] == expected


# -- Vary ---------------------------------------------------------------------------------------


def test_vary_is_merged_without_duplicates_in_a_stable_order(client: Client) -> None:
    first = client.get("/http/vary/")
    second = client.get("/http/vary/")

    assert first["Vary"] == "Origin, X-Tenant, Accept-Encoding, Accept-Language"
    assert second["Vary"] == first["Vary"]
    assert first["Cache-Control"] == "public, max-age=0, s-maxage=60"


# -- ETag and 304 -------------------------------------------------------------------------------


def test_etag_and_304_keep_the_cache_headers(client: Client) -> None:
    first = client.get("/http/public/")
    etag = first["ETag"]
    assert etag.startswith('"')
    assert len(etag) > 2

    second = client.get("/http/public/", headers={"If-None-Match": etag})

    assert second.status_code == 304
    assert second.content == b""
    assert second["ETag"] == etag
    for header in ("Cache-Control", "Surrogate-Control", "Surrogate-Key", "Cache-Tag", "Vary"):
        assert second[header] == first[header], header


def test_etag_is_stable_and_a_different_one_gives_the_page(client: Client) -> None:
    assert client.get("/http/public/")["ETag"] == client.get("/http/public/")["ETag"]

    response = client.get("/http/public/", headers={"If-None-Match": '"other"'})

    assert response.status_code == 200
    assert response.content == b"public page"


def test_head_gets_the_etag_of_get_and_its_304(client: Client) -> None:
    etag = client.get("/http/public/")["ETag"]

    head = client.head("/http/public/")
    assert head.status_code == 200
    assert head["ETag"] == etag
    assert head.content == b""

    assert client.head("/http/public/", headers={"If-None-Match": etag}).status_code == 304


def test_if_modified_since(client: Client) -> None:
    later = client.get(
        "/http/lastmod/", headers={"If-Modified-Since": "Tue, 02 Jan 2024 00:00:00 GMT"}
    )
    earlier = client.get(
        "/http/lastmod/", headers={"If-Modified-Since": "Sun, 31 Dec 2023 00:00:00 GMT"}
    )

    assert later.status_code == 304
    assert later["Last-Modified"] == "Mon, 01 Jan 2024 00:00:00 GMT"
    assert earlier.status_code == 200


def test_view_etag_is_kept(client: Client) -> None:
    response = client.get("/http/own-etag/", headers={"If-None-Match": '"v1"'})

    assert response.status_code == 304
    assert response["ETag"] == '"v1"'


def test_etag_off_leaves_the_body_unhashed_and_still_answers_a_view_etag(
    client: Client, settings: Any
) -> None:
    http_settings(settings, ETAG=False)

    public = client.get("/http/public/")
    private = client.get("/http/private/")
    own = client.get("/http/own-etag/", headers={"If-None-Match": '"v1"'})

    assert "ETag" not in public
    assert public["Cache-Control"] == "public, max-age=0, s-maxage=600"
    assert "ETag" not in private
    assert own.status_code == 304
    assert own["ETag"] == '"v1"'


def test_private_responses_get_etag_and_304(client: Client) -> None:
    etag = client.get("/http/private/")["ETag"]

    response = client.get("/http/private/", headers={"If-None-Match": etag})

    assert response.status_code == 304
    assert response["Cache-Control"] == "private, max-age=30"


def test_streaming_responses_get_no_etag_and_no_304(client: Client) -> None:
    response = client.get("/http/stream/", headers={"If-None-Match": "*"})

    assert response.status_code == 200
    assert response.streaming
    assert response.getvalue() == b"chunk one chunk two"
    assert "ETag" not in response
    assert response["Surrogate-Key"] == "testapp.stream"


# -- Server-Timing ------------------------------------------------------------------------------


def test_server_timing_off_by_default_in_production(client: Client) -> None:
    assert "Server-Timing" not in client.get("/http/public/")


def test_server_timing_reports_query_tier_hits_and_misses(client: Client, settings: Any) -> None:
    http_settings(settings, SERVER_TIMING=True)

    response = client.get("/http/public/")

    assert response["Server-Timing"] == "tiercache-hits;desc=2, tiercache-misses;desc=1"


def test_server_timing_follows_debug_when_unset(client: Client, settings: Any) -> None:
    settings.DEBUG = True

    assert client.get("/http/plain/")["Server-Timing"] == (
        "tiercache-hits;desc=0, tiercache-misses;desc=0"
    )


def test_server_timing_follows_debug_changed_while_running(client: Client, settings: Any) -> None:
    assert "Server-Timing" not in client.get("/http/plain/")

    settings.DEBUG = True
    assert "Server-Timing" in client.get("/http/plain/")

    settings.DEBUG = False
    assert "Server-Timing" not in client.get("/http/plain/")


# -- who asked ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_loaded_user_makes_the_response_user_specific_a_lazy_one_is_never_loaded() -> None:
    from django.contrib.auth.models import AnonymousUser, User
    from django.test import RequestFactory
    from django.utils.functional import SimpleLazyObject

    from django_tiercache.http.headers import user_specific_reason

    request = RequestFactory().get("/")
    request.user = User(username="ada")  # set by a custom authentication middleware
    assert user_specific_reason(request, HttpResponse()) == "the user is authenticated"

    request.user = AnonymousUser()
    assert user_specific_reason(request, HttpResponse()) is None

    loaded: list[bool] = []
    request.user = SimpleLazyObject(lambda: loaded.append(True) or User(username="ada"))
    assert user_specific_reason(request, HttpResponse()) is None
    assert loaded == []  # looking never loads the user (nor the session behind it)
