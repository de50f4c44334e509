"""VarnishPurger: what it sends (``responses``), then a real Varnish running docs/varnish.vcl."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from django_tiercache.edge.purgers import PurgerConfigError
from django_tiercache.edge.purgers.varnish import VarnishPurger
from tests.varnish_support import TOKEN, Origin, Reply, Varnish, origin, varnish, varnish_bin

__all__ = ["origin", "varnish", "varnish_bin"]  # fixtures

URLS = ["http://10.0.0.1:6081/", "http://10.0.0.2:6081/"]


def make(**options: Any) -> VarnishPurger:
    return VarnishPurger("varnish", {"URLS": URLS, "TOKEN": TOKEN, **options})


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def accepting(api: responses.RequestsMock) -> responses.RequestsMock:
    for url in URLS:
        api.add("PURGE", url, body="Purged 1 objects")
        api.add("BAN", url, body="Banned everything")
    return api


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"URLS": []},
        {"URLS": "http://127.0.0.1:6081/"},
        {"URLS": ["127.0.0.1:6081"]},
        {"URLS": URLS, "KEY_HEADER": "x key"},
        {"URLS": URLS, "TOKEN_HEADER": ""},
        {"URLS": URLS, "MAX_HEADER_BYTES": 8192},
        {"URLS": URLS, "MAX_HEADER_BYTES": 512},
        {"URLS": URLS, "MAX_KEYS_PER_REQUEST": 0},
    ],
)
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(PurgerConfigError, match="'varnish'"):
        VarnishPurger("varnish", options)


def test_purge_goes_to_every_server_with_token_and_keys(accepting: responses.RequestsMock) -> None:
    result = make().purge_keys(["shop.product:2", "shop.product:1", "shop.product:1"])
    assert result.ok
    assert result.keys == ("shop.product:1", "shop.product:2")
    assert [(c.request.method, c.request.url) for c in accepting.calls] == [
        ("PURGE", URLS[0]),
        ("PURGE", URLS[1]),
    ]
    for call in accepting.calls:
        assert call.request.headers["xkey"] == "shop.product:1 shop.product:2"
        assert call.request.headers["X-Purge-Token"] == TOKEN
        assert "xkey-softpurge" not in call.request.headers


def test_soft_purge_and_header_names(accepting: responses.RequestsMock) -> None:
    make().purge_keys(["a"], soft=True)
    make(SOFT_PURGE=True).purge_keys(["b"])
    make(KEY_HEADER="X-Key", SOFT_KEY_HEADER="X-Soft-Key", TOKEN_HEADER="X-Secret").purge_keys(
        ["c"], soft=True
    )
    headers = [call.request.headers for call in accepting.calls]
    assert [h.get("xkey-softpurge") for h in headers[:4]] == ["a", "a", "b", "b"]
    assert headers[4]["X-Soft-Key"] == "c"
    assert headers[4]["X-Secret"] == TOKEN
    assert "xkey" not in headers[0]


def test_purge_all_bans_on_every_server(accepting: responses.RequestsMock) -> None:
    assert make().purge_all().ok
    assert [c.request.method for c in accepting.calls] == ["BAN", "BAN"]


def test_batches_by_header_bytes_and_by_count() -> None:
    purger = make()
    keys = [f"k{i:04}" + "x" * (i % 700) for i in range(400)]
    batches = list(purger.batches(keys))
    assert sorted(itertools.chain(*batches)) == sorted(set(keys))
    assert len(batches) > 1
    for batch in batches:
        assert len(f"xkey-softpurge: {' '.join(batch)}".encode()) <= 4096
    longest = ["y" * 1024 + str(i) for i in range(10)]
    assert all(len(b) == 3 for b in list(purger.batches(longest))[:-1])
    short = [f"k{i}" for i in range(600)]
    assert [len(b) for b in make(MAX_KEYS_PER_REQUEST=256).batches(short)][:2] == [256, 256]


def test_a_failing_server_fails_the_purge_but_the_others_are_purged(
    api: responses.RequestsMock,
) -> None:
    api.add("PURGE", URLS[0], body=requests.ConnectionError("refused"))
    api.add("PURGE", URLS[1], body="Purged 0 objects")
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable
    assert "10.0.0.1:6081" in result.error
    assert len(api.calls) == 2


def test_a_refused_purge_is_not_retried(api: responses.RequestsMock) -> None:
    api.add("PURGE", URLS[0], status=403)
    api.add("PURGE", URLS[1], status=403)
    result = make().purge_keys(["a"])
    assert result.retryable is False
    assert "HTTP 403" in result.error


def test_the_token_never_leaks(api: responses.RequestsMock) -> None:
    purger = make(URLS=[f"http://user:{TOKEN}@10.0.0.1:6081/"])
    api.add("PURGE", URLS[0], body=requests.ConnectionError(f"X-Purge-Token: {TOKEN}"))
    result = purger.purge_keys(["a"])
    assert result.error
    assert TOKEN not in f"{purger!r} {json.dumps(result.as_json())}"


# --- a real Varnish -------------------------------------------------------------------------

_paths = itertools.count()
PUBLIC = "public, max-age=0"


def page(origin: Origin, keys: str, body: str = "v1", **headers: str) -> str:
    """A new path at the origin whose answer carries ``keys``; its path."""
    path = f"/page/{next(_paths)}"
    origin.routes[path] = Reply(
        headers={
            "Surrogate-Key": keys,
            "Surrogate-Control": "max-age=3600",
            "Cache-Control": PUBLIC,
            **headers,
        },
        body=body,
    )
    return path


def real(varnish: Varnish, **options: Any) -> VarnishPurger:
    return VarnishPurger("varnish", {"URLS": [varnish.url], "TOKEN": TOKEN, **options})


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.varnish
def test_a_purged_key_is_fresh_on_the_next_request(varnish: Varnish, origin: Origin) -> None:
    path = page(origin, "shop.product:1 shop.product")
    other = page(origin, "shop.product:2 shop.product")
    assert varnish.get(path).headers["X-Cache"] == "MISS"
    varnish.get(other)
    cached = varnish.get(path)
    assert (cached.headers["X-Cache"], cached.text) == ("HIT", "v1")
    origin.routes[path].body = "v2"
    assert varnish.get(path).text == "v1"  # still cached

    result = real(varnish).purge_keys(["shop.product:1"])
    assert result.ok

    fresh = varnish.get(path)
    assert (fresh.headers["X-Cache"], fresh.text) == ("MISS", "v2")
    assert varnish.get(other).headers["X-Cache"] == "HIT"  # another key: untouched


@pytest.mark.varnish
def test_internal_headers_never_reach_clients(varnish: Varnish, origin: Origin) -> None:
    path = page(origin, "a b", **{"Cache-Tag": "a,b", "xkey": "a"})
    for response in (varnish.get(path), varnish.get(path)):
        assert not {"Surrogate-Key", "Surrogate-Control", "Cache-Tag", "xkey"} & set(
            response.headers
        )
        assert response.headers["X-Cache"] in ("HIT", "MISS")


@pytest.mark.varnish
def test_surrogate_control_sets_the_ttl(varnish: Varnish, origin: Origin) -> None:
    """Cache-Control max-age=0 alone would not be cached; Surrogate-Control max-age wins."""
    path = page(origin, "ttl")
    varnish.get(path)
    assert varnish.get(path).headers["X-Cache"] == "HIT"
    assert int(varnish.get(path).headers["Age"]) < 3600


@pytest.mark.varnish
def test_cache_tag_is_indexed_too(varnish: Varnish, origin: Origin) -> None:
    path = f"/page/{next(_paths)}"
    origin.routes[path] = Reply(
        headers={"Cache-Tag": "tag-a, tag-b", "Cache-Control": "public, s-maxage=3600"}
    )
    varnish.get(path)
    assert varnish.get(path).headers["X-Cache"] == "HIT"
    assert real(varnish).purge_keys(["tag-b"]).ok
    assert varnish.get(path).headers["X-Cache"] == "MISS"


@pytest.mark.varnish
def test_soft_purge_serves_stale_once_within_stale_while_revalidate(
    varnish: Varnish, origin: Origin
) -> None:
    path = page(origin, "soft")
    origin.routes[path].headers["Surrogate-Control"] = "max-age=3600, stale-while-revalidate=60"
    varnish.get(path)
    origin.routes[path].body = "v2"
    assert real(varnish).purge_keys(["soft"], soft=True).ok
    stale = varnish.get(path)
    assert stale.text == "v1"  # served stale while Varnish refreshes in the background
    wait_for(lambda: origin.hits[path] == 2)
    wait_for(lambda: varnish.get(path).text == "v2")


@pytest.mark.varnish
def test_soft_purge_without_a_stale_window_is_fresh_at_once(
    varnish: Varnish, origin: Origin
) -> None:
    path = page(origin, "soft-strict")
    varnish.get(path)
    origin.routes[path].body = "v2"
    assert real(varnish).purge_keys(["soft-strict"], soft=True).ok
    assert varnish.get(path).text == "v2"


@pytest.mark.varnish
def test_purge_all_bans_everything(varnish: Varnish, origin: Origin) -> None:
    paths = [page(origin, f"all-{i}") for i in range(3)]
    for path in paths:
        varnish.get(path)
    assert real(varnish).purge_all().ok
    assert [varnish.get(path).headers["X-Cache"] for path in paths] == ["MISS"] * 3


@pytest.mark.varnish
def test_a_wrong_token_is_refused_for_good(varnish: Varnish, origin: Origin) -> None:
    path = page(origin, "guarded")
    varnish.get(path)
    for purger in (real(varnish, TOKEN="wrong"), real(varnish, TOKEN="")):
        result = purger.purge_keys(["guarded"])
        assert result.retryable is False
        assert "403" in result.error
        assert "bad purge token" in result.error
        assert purger.purge_all().retryable is False
    assert varnish.get(path).headers["X-Cache"] == "HIT"


@pytest.mark.varnish
def test_many_long_keys_fit_varnish_header_limits(varnish: Varnish, origin: Origin) -> None:
    keys = [f"shop.product:{i}:" + "x" * 400 for i in range(100)]  # 40 KB of keys
    path = page(origin, keys[-1])
    varnish.get(path)
    result = real(varnish).purge_keys(keys)
    assert result.ok, result.error
    assert varnish.get(path).headers["X-Cache"] == "MISS"


@pytest.mark.varnish
@pytest.mark.parametrize(
    "credential", [{"Cookie": "sessionid=abc"}, {"Authorization": "Basic eDp5"}]
)
def test_requests_with_credentials_are_cached_only_when_public(
    varnish: Varnish, origin: Origin, credential: dict[str, str]
) -> None:
    private = page(origin, "creds", **{"Cache-Control": "max-age=60"})
    public = page(origin, "creds")
    for _ in range(2):
        varnish.get(private, headers=credential)
        varnish.get(public, headers=credential)
    assert origin.hits[private] == 2
    assert origin.hits[public] == 1
    anonymous = varnish.get(private)
    assert anonymous.headers["X-Cache"] == "MISS"  # never served a response fetched with them


@pytest.mark.varnish
def test_the_purge_token_is_not_forwarded(varnish: Varnish, origin: Origin) -> None:
    path = page(origin, "forward")
    varnish.get(path, headers={"X-Purge-Token": TOKEN})
    assert "X-Purge-Token" not in origin.requests[-1]
