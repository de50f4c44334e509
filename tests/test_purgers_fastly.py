"""FastlyPurger against the Fastly purge API as tests/cdn_api describes it (``responses``)."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
import requests
import responses
from django.core import checks
from django.test import override_settings

from django_tiercache.edge.purgers import PurgerConfigError
from django_tiercache.edge.purgers.fastly import FastlyPurger
from django_tiercache.edge.purgers.http_api import retry_after_seconds
from tests import cdn_specs

TOKEN = "fastly-secret-token-9c1e"
FASTLY = re.compile(r"https://api\.fastly\.com/.*")


def make(**options: Any) -> FastlyPurger:
    return FastlyPurger(
        "fastly", {"SERVICE_ID": "SU1Z0isxPaozGVKXdv0eY", "API_TOKEN": TOKEN, **options}
    )


def check_request(request: requests.PreparedRequest) -> dict[str, Any] | None:
    """Assert that ``request`` is what the Fastly spec allows; its JSON body, if any."""
    doc = cdn_specs.fastly()
    assert request.method
    assert request.url
    template, params = cdn_specs.match_path(doc, request.url)
    assert params["service_id"] == "SU1Z0isxPaozGVKXdv0eY"
    op = cdn_specs.operation(doc, template, request.method)
    schemes = doc["components"]["securitySchemes"]
    for requirement in op["security"]:
        for name in requirement:
            assert schemes[name]["in"] == "header"
            assert request.headers[schemes[name]["name"]] == TOKEN
    declared = cdn_specs.header_parameters(doc, op)
    for name, value in request.headers.items():
        if name.lower().startswith(("fastly-", "surrogate-")) and name.lower() != "fastly-key":
            assert name.lower() in declared, f"{name} is not a header of {op['operationId']}"
            param_schema = declared[name.lower()]["schema"]
            if "enum" in param_schema:
                assert value in param_schema["enum"]
    if not request.body:
        assert not op.get("requestBody", {}).get("required")
        return None
    assert request.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = json.loads(request.body)
    cdn_specs.validate(doc, op["requestBody"]["content"]["application/json"]["schema"], body)
    limit = cdn_specs.limits()["fastly"]["max_keys_per_request"]
    assert limit == op["x-max-keys-per-request"]
    assert 1 <= len(body["surrogate_keys"]) <= limit
    return body


def fastly_ok(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
    """A spec-conforming Fastly: ``{key: purge id}`` for a bulk purge, ``{status}`` for all."""
    body = check_request(request)
    if body is None:
        return 200, {}, json.dumps({"status": "ok"})
    return 200, {}, json.dumps({key: f"id-{key}" for key in body["surrogate_keys"]})


@pytest.fixture
def api() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture
def fastly(api: responses.RequestsMock) -> responses.RequestsMock:
    api.add_callback(responses.POST, FASTLY, callback=fastly_ok)
    return api


def sent(api: responses.RequestsMock) -> list[dict[str, Any]]:
    return [json.loads(call.request.body or b"{}") for call in api.calls]


def test_keys_go_in_batches_of_256(fastly: responses.RequestsMock) -> None:
    keys = [f"shop.product:{i}" for i in range(600)]
    result = make().purge_keys([*keys, *keys[:10]])
    assert [len(body["surrogate_keys"]) for body in sent(fastly)] == [256, 256, 88]
    assert result.ok
    assert sorted(result.keys) == sorted(keys)
    assert len(result.request_ids) == 600
    assert {url for url in (c.request.url for c in fastly.calls)} == {
        "https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/purge"
    }


def test_soft_purge_is_the_default(fastly: responses.RequestsMock) -> None:
    make().purge_keys(["a"])
    make(SOFT_PURGE=False).purge_keys(["a"])
    make().purge_keys(["a"], soft=False)
    soft = [call.request.headers.get("Fastly-Soft-Purge") for call in fastly.calls]
    assert soft == ["1", None, None]


def test_purge_all_is_never_soft(fastly: responses.RequestsMock) -> None:
    result = make(SOFT_PURGE=True).purge_all()
    assert result.ok
    (call,) = fastly.calls
    assert call.request.url == "https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/purge_all"
    assert "Fastly-Soft-Purge" not in call.request.headers


def test_staging_environment(fastly: responses.RequestsMock) -> None:
    make(ENVIRONMENT="staging").purge_keys(["a"])
    assert fastly.calls[0].request.headers["Fastly-Purge-Environment"] == "staging"


def test_double_purge_sends_every_key_again_after_the_delay(
    fastly: responses.RequestsMock,
) -> None:
    purger = make(DOUBLE_PURGE=True)
    waits: list[float] = []
    purger.sleep = waits.append  # type: ignore[method-assign]
    keys = [f"k{i}" for i in range(300)]
    result = purger.purge_keys(keys)
    assert waits == [2.0]
    assert [len(body["surrogate_keys"]) for body in sent(fastly)] == [256, 44, 256, 44]
    assert result.ok
    assert len(result.keys) == 300


def test_double_purge_is_off_by_default(fastly: responses.RequestsMock) -> None:
    make().purge_keys(["a"])
    assert len(fastly.calls) == 1


def test_one_session_with_timeouts_reused(fastly: responses.RequestsMock) -> None:
    purger = make(CONNECT_TIMEOUT=1, READ_TIMEOUT=4)
    session = purger.session
    purger.purge_keys([f"k{i}" for i in range(300)])
    purger.purge_all()
    assert purger.session is session
    assert [call.request.req_kwargs["timeout"] for call in fastly.calls] == [(1.0, 4.0)] * 3
    make().purge_keys(["a"])
    assert fastly.calls[-1].request.req_kwargs["timeout"] == (3.05, 10.0)


def test_rate_limited_with_retry_after_seconds(api: responses.RequestsMock) -> None:
    api.add(responses.POST, FASTLY, status=429, headers={"Retry-After": "30"}, json={})
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable
    assert result.retry_after == 30
    assert result.status_code == 429


def test_rate_limited_with_fastly_reset(api: responses.RequestsMock) -> None:
    reset = str(int(time.time()) + 120)
    api.add(responses.POST, FASTLY, status=429, headers={"Fastly-RateLimit-Reset": reset})
    result = make().purge_keys(["a"])
    assert result.retryable
    assert result.retry_after is not None
    assert 100 < result.retry_after <= 120


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "12"}, 12.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": formatdate(1_000_090, usegmt=True)}, 90.0),
        ({"Retry-After": formatdate(999_000, usegmt=True)}, 0.0),  # in the past: now
        ({"Fastly-RateLimit-Reset": "1000045"}, 45.0),
        ({"Retry-After": "soon", "Fastly-RateLimit-Reset": "1000005"}, 5.0),
        ({"Retry-After": "99999999"}, 3600.0),  # capped
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert retry_after_seconds(headers, now=1_000_000) == expected


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_are_retryable(api: responses.RequestsMock, status: int) -> None:
    api.add(responses.POST, FASTLY, status=status, body="upstream trouble")
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable
    assert result.retry_after is None
    assert f"HTTP {status}" in result.error


@pytest.mark.parametrize(
    "exc",
    [
        requests.ConnectTimeout("slow"),
        requests.ReadTimeout("slow"),
        requests.ConnectionError("refused"),
    ],
)
def test_network_failures_are_retryable(api: responses.RequestsMock, exc: Exception) -> None:
    api.add(responses.POST, FASTLY, body=exc)
    result = make().purge_keys(["a"])
    assert not result.ok
    assert result.retryable
    assert result.status_code is None
    assert "api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/purge" in result.error


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (401, {"msg": "Provided credentials are missing or invalid"}, "credentials are missing"),
        (
            400,
            {"status": "fail", "reason": "Batch surrogate key request only supports up to 256"},
            "only supports up to 256",
        ),
        (404, {"msg": "Record not found", "details": "Cannot find service"}, "Record not found"),
        (403, None, "Forbidden"),
    ],
)
def test_refusals_are_not_retried_and_keep_the_api_message(
    api: responses.RequestsMock, status: int, body: Any, message: str
) -> None:
    if body is None:
        api.add(responses.POST, FASTLY, status=status, body="")
    else:
        api.add(responses.POST, FASTLY, status=status, json=body)
    result = make().purge_keys([f"k{i}" for i in range(300)])
    assert not result.ok
    assert result.retryable is False
    assert message in result.error
    assert len(api.calls) == 1  # the first refused batch stops the purge


def test_the_token_never_leaks(api: responses.RequestsMock, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    purger = make()
    api.add(responses.POST, FASTLY, status=401, json={"msg": f"bad token {TOKEN}"})
    api.add(responses.POST, FASTLY, body=requests.ConnectionError(f"reset while sending {TOKEN}"))
    api.add(responses.POST, FASTLY, status=503, body=f"echo: Fastly-Key: {TOKEN}")
    results = [purger.purge_keys(["a"]) for _ in range(3)]
    texts = [repr(purger), str(purger), caplog.text]
    texts += [r.error for r in results] + [json.dumps(r.as_json()) for r in results]
    assert all(r.error for r in results)
    assert not [text for text in texts if TOKEN in text]


@pytest.mark.parametrize("missing", ["SERVICE_ID", "API_TOKEN"])
def test_required_options(missing: str) -> None:
    options = {"SERVICE_ID": "s", "API_TOKEN": TOKEN}
    del options[missing]
    with pytest.raises(PurgerConfigError, match=f"'fastly'.*{missing}"):
        FastlyPurger("fastly", options)


@pytest.mark.parametrize(
    "options",
    [
        {"DOUBLE_PURGE_DELAY": -1},
        {"DOUBLE_PURGE_DELAY": "2"},
        {"ENVIRONMENT": "prod"},
        {"CONNECT_TIMEOUT": 0},
        {"READ_TIMEOUT": None},
    ],
)
def test_bad_options_are_check_errors(options: dict[str, Any]) -> None:
    config = {
        "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
        "SERVICE_ID": "s",
        "API_TOKEN": TOKEN,
        **options,
    }
    with override_settings(TIERCACHE={"PURGE_ASYNC": False, "PURGERS": {"cdn": config}}):
        found = [m for m in checks.run_checks() if m.id == "tiercache.E005"]
    assert len(found) == 1
    assert "'cdn'" in found[0].msg
    assert TOKEN not in found[0].msg


def test_thousand_keys_cost_ceil_keys_over_256_calls(fastly: responses.RequestsMock) -> None:
    keys = {f"shop.product:{i}" for i in range(1000)} | {"shop.product", "shop.category:1"}
    assert make().purge_keys(keys).ok
    assert len(fastly.calls) == math.ceil(len(keys) / 256) == 4
