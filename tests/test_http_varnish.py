"""End to end: the test site behind a real Varnish running docs/varnish.vcl (xkey)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.test import Client

from tests.varnish_support import Varnish, VarnishBinary, start_varnish, varnish_bin

__all__ = ["varnish_bin"]  # fixture

pytestmark = [pytest.mark.varnish, pytest.mark.django_db(transaction=True)]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site(varnish_bin: VarnishBinary, settings: Any) -> Iterator[Varnish]:
    """The test site (tests/urls.py, TierCacheMiddleware first) behind docs/varnish.vcl."""
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    server = ThreadedWSGIServer(("127.0.0.1", 0), QuietHandler)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with start_varnish(varnish_bin, int(server.server_address[1])) as varnish:
            yield varnish
    finally:
        server.shutdown()
        server.server_close()


def served_from_cache(response: Any) -> bool:
    return (
        int(response.headers.get("Age", "0")) > 0 or len(response.headers["X-Varnish"].split()) == 2
    )


def test_public_page_is_served_from_varnish_on_the_second_request(site: Varnish) -> None:
    first = site.get("/http/product/11/")
    second = site.get("/http/product/11/")

    assert first.status_code == second.status_code == 200
    assert not served_from_cache(first)
    assert served_from_cache(second)
    assert second.text == "product 11"
    assert second.headers["Cache-Control"] == "public, max-age=10, s-maxage=120"
    assert "Surrogate-Key" not in second.headers  # for Varnish only


def test_logged_in_request_never_gets_the_cached_anonymous_page(site: Varnish) -> None:
    client = Client()
    client.force_login(User.objects.create_user("ada", password="x"))
    cookies = {"sessionid": client.cookies["sessionid"].value}

    anonymous = [site.get("/http/user/") for _ in range(2)]
    member = site.get("/http/user/", cookies=cookies)
    site.get("/http/public/")
    cached = site.get("/http/public/")
    member_public = site.get("/http/public/", cookies=cookies)

    assert [r.text for r in anonymous] == ["hello visitor", "hello visitor"]
    assert not any(served_from_cache(r) for r in anonymous)  # private: never stored
    assert member.text == "hello member"
    assert not served_from_cache(member)
    assert served_from_cache(cached)
    assert not served_from_cache(member_public)  # credentials are a separate cache entry
