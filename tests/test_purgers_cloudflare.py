"""CloudflarePurger against Cloudflare's purge_cache API as tests/cdn_api describes it."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from django_tiercache.edge.purgers import PurgerConfigError
from django_tiercache.edge.purgers.cloudflare import CloudflarePurger
from tests import cdn_specs

TOKEN = "cf-api-token-77aa"
ZONE = "023e105f4ecef8ad9ca31a8372d0c353"
CLOUDFLARE = re.compile(r"https://api\.cloudflare\.com/.*")
#: The body variants of cloudflare_purge.yaml: exactly one per request.
VARIANTS = {"tags", "hosts", "prefixes", "purge_everything", "files"}


def make(**options: Any) -> CloudflarePurger:
    return CloudflarePurger("cloudflare", {"ZONE_ID": ZONE, "API_TOKEN": TOKEN, **options})


def check_request(request: requests.PreparedRequest) -> dict[str, Any]:
    """Assert that ``request`` is what the Cloudflare spec allows; its JSON body."""
    doc = cdn_specs.cloudflare()
    assert request.method
    assert request.url
    template, params = cdn_specs.match_path(doc, request.url)
    assert params["zone_id"] == ZONE
    op = cdn_specs.operation(doc, template, request.method)
    scheme = doc["components"]["securitySchemes"]["api_token"]
    assert {"api_token": []} in doc["security"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(request.body or b"")
    cdn_specs.validate(doc, op["requestBody"]["content"]["application/json"]["schema"], body)
    (variant,) = body.keys()  # exactly one kind of purge per call
    assert variant in VARIANTS
    if variant != "purge_everything":
        assert 1 <= len(body[variant]) <= cdn_specs.limits()["cloudflare"]["max_items_per_request"]
    return body


def envelope(success: bool = True, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A response envelope, checked against the spec's response schemas."""
    doc = cdn_specs.cloudflare()
    if success:
        body = {
            "success": True,
            "errors": [],
            "messages": [],
            "result": {"id": "9a7806061c88ada191ed06f989cc3dac"},
        }
        op = doc["paths"]["/zones/{zone_id}/purge_cache"]["post"]
        schema = op["responses"]["200"]["content"]["application/json"]["schema"]
    else:
        body = {"success": False, "errors": errors or [], "messages": [], "result": None}
        op = doc["paths"]["/zones/{zone_id}/purge_cache"]["post"]
        schema = op["responses"]["4XX"]["content"]["application/json"]["schema"]
    cdn_specs.validate(doc, schema, body)
    return body


def cloudflare_ok(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
    check_request(request)
    return 200, {}, json.dumps(envelope())


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def cloudflare(api: responses.RequestsMock) -> responses.RequestsMock:
    api.add_callback(responses.POST, CLOUDFLARE, callback=cloudflare_ok)
    return api


def bodies(api: responses.RequestsMock) -> list[dict[str, Any]]:
    return [json.loads(call.request.body or b"") for call in api.calls]


def test_tags_go_in_batches_of_30_by_default(cloudflare: responses.RequestsMock) -> None:
    keys = [f"shop.product:{i}" for i in range(70)]
    result = make().purge_keys(keys)
    assert [len(body["tags"]) for body in bodies(cloudflare)] == [30, 30, 10]
    assert result.ok
    assert sorted(result.keys) == sorted(keys)
    assert result.request_ids == ("9a7806061c88ada191ed06f989cc3dac",) * 3
    assert {call.request.url for call in cloudflare.calls} == {
        f"https://api.cloudflare.com/client/v4/zones/{ZONE}/purge_cache"
    }


@pytest.mark.parametrize("size", [1, 100])
def test_batch_size_option(cloudflare: responses.RequestsMock, size: int) -> None:
    keys = [f"k{i}" for i in range(250)]
    assert make(BATCH_SIZE=size).purge_keys(keys).ok
    assert len(cloudflare.calls) == math.ceil(250 / size)


@pytest.mark.parametrize("size", [0, 101, "30", 30.0, True, None])
def test_bad_batch_size(size: Any) -> None:
    with pytest.raises(PurgerConfigError, match=r"'cloudflare'.*BATCH_SIZE"):
        make(BATCH_SIZE=size)


@pytest.mark.parametrize("missing", ["ZONE_ID", "API_TOKEN"])
def test_required_options(missing: str) -> None:
    options = {"ZONE_ID": ZONE, "API_TOKEN": TOKEN}
    del options[missing]
    with pytest.raises(PurgerConfigError, match=f"'cloudflare'.*{missing}"):
        CloudflarePurger("cloudflare", options)


def test_soft_is_ignored(cloudflare: responses.RequestsMock) -> None:
    assert make().purge_keys(["a"], soft=True).ok
    assert bodies(cloudflare) == [{"tags": ["a"]}]


def test_purge_everything(cloudflare: responses.RequestsMock) -> None:
    assert make().purge_all().ok
    assert bodies(cloudflare) == [{"purge_everything": True}]


def test_purge_hosts_prefixes_and_files(cloudflare: responses.RequestsMock) -> None:
    purger = make(BATCH_SIZE=2)
    assert purger.purge_hosts(["www.example.com", "img.example.com", "www.example.com"]).ok
    assert purger.purge_prefixes(["www.example.com/a", "www.example.com/b", "x.com/c"]).ok
    assert purger.purge_files(
        [
            "http://www.example.com/a.css",
            {"url": "http://www.example.com/cat.jpg", "headers": {"CF-IPCountry": "US"}},
        ]
    ).ok
    assert bodies(cloudflare) == [
        {"hosts": ["img.example.com", "www.example.com"]},
        {"prefixes": ["www.example.com/a", "www.example.com/b"]},
        {"prefixes": ["x.com/c"]},
        {"files": ["http://www.example.com/a.css"]},
        {"files": [{"url": "http://www.example.com/cat.jpg", "headers": {"CF-IPCountry": "US"}}]},
    ]


def test_http_200_with_success_false_is_a_failure(api: responses.RequestsMock) -> None:
    body = envelope(False, [{"code": 1134, "message": "Purge by tag is not available"}])
    api.add(responses.POST, CLOUDFLARE, status=200, json=body)
    result = make().purge_keys([f"k{i}" for i in range(40)])
    assert not result.ok
    assert result.retryable is False
    assert "1134: Purge by tag is not available" in result.error
    assert len(api.calls) == 1


def test_200_without_an_envelope_is_retried(api: responses.RequestsMock) -> None:
    api.add(responses.POST, CLOUDFLARE, status=200, body="<html>proxy</html>")
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, 1002, "Invalid tag"),
        (401, 10000, "Authentication error"),
        (403, 10000, "Authentication error"),
        (404, 7003, "No route for the URI"),
    ],
)
def test_refusals_keep_the_api_message(
    api: responses.RequestsMock, status: int, code: int, message: str
) -> None:
    api.add(
        responses.POST,
        CLOUDFLARE,
        status=status,
        json=envelope(False, [{"code": code, "message": message}]),
    )
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable is False
    assert result.status_code == status
    assert f"{code}: {message}" in result.error


def test_rate_limit(api: responses.RequestsMock) -> None:
    body = envelope(False, [{"code": 1015, "message": "You are being rate limited"}])
    api.add(responses.POST, CLOUDFLARE, status=429, headers={"Retry-After": "300"}, json=body)
    result = make().purge_keys(["a"])
    assert result.retryable
    assert result.retry_after == 300
    assert "1015: You are being rate limited" in result.error


@pytest.mark.parametrize("failure", [502, requests.ReadTimeout("slow")])
def test_server_errors_and_timeouts_are_retryable(
    api: responses.RequestsMock, failure: Any
) -> None:
    if isinstance(failure, int):
        api.add(responses.POST, CLOUDFLARE, status=failure, body="bad gateway")
    else:
        api.add(responses.POST, CLOUDFLARE, body=failure)
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable


def test_the_token_never_leaks(api: responses.RequestsMock, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    purger = make()
    api.add(
        responses.POST,
        CLOUDFLARE,
        status=403,
        json=envelope(False, [{"code": 9109, "message": f"Invalid access token {TOKEN}"}]),
    )
    api.add(responses.POST, CLOUDFLARE, body=requests.ConnectionError(f"Bearer {TOKEN}"))
    results = [purger.purge_keys(["a"]), purger.purge_all()]
    texts = [repr(purger), caplog.text, *(json.dumps(r.as_json()) for r in results)]
    assert all(r.error for r in results)
    assert not [text for text in texts if TOKEN in text]


@pytest.mark.parametrize("status", [200, 400, 403])
@pytest.mark.parametrize("code", [971, 1015])
def test_a_throttle_code_is_transient_at_any_status(
    api: responses.RequestsMock, status: int, code: int
) -> None:
    """Cloudflare's throttle codes say "later", even on a 200 or a 4xx."""
    errors = [{"code": code, "message": "Please wait"}]
    # 971 is what the API answers when throttling, though the OpenAPI schema says codes start at
    # 1000: that body is built by hand, not validated against the schema.
    body = (
        envelope(False, errors)
        if code >= 1000
        else {"success": False, "errors": errors, "messages": [], "result": None}
    )
    api.add(responses.POST, CLOUDFLARE, status=status, headers={"Retry-After": "7"}, json=body)
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable
    assert result.retry_after == 7
    assert f"{code}: Please wait" in result.error


def test_a_permanent_code_beside_no_throttle_is_a_refusal(api: responses.RequestsMock) -> None:
    body = envelope(False, [{"code": 10000, "message": "Authentication error"}])
    api.add(responses.POST, CLOUDFLARE, status=200, json=body)
    result = make().purge_keys(["a"])
    assert result.retryable is False
    assert result.retry_after is None
