"""Purger tokens never leak: not in logs, outbox rows, the admin or command output, in any form.

Tokens are pasted the way operators paste them (a newline from a secrets file, spaces around,
quotes) and pushed through every way a purge can fail: an API refusal echoing the token raw,
``repr()``-escaped or JSON-escaped, a network error quoting it, a purger raising with it, a
dispatcher raising with it. Every text a person could read is then searched for the token's core
(every escaped form of a token contains it).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import requests
import responses
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from django_tiercache import invalidate
from django_tiercache.edge.checks import check_purger_secrets
from django_tiercache.edge.purgers import BasePurger, PurgeResult
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import MASK, redact

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.admin_urls")]

FASTLY_CORE = "tok-fastly-7f3a91"
CLOUDFLARE_CORE = "tok-cf-5b2e44"
RAISING_CORE = "tok-raise-0c9d17"
DISPATCH_CORE = "tok-dispatch-e1f2"
CORES = (FASTLY_CORE, CLOUDFLARE_CORE, RAISING_CORE, DISPATCH_CORE)
FASTLY_URL = "https://api.fastly.com/service/svc/purge"
CLOUDFLARE_URL = "https://api.cloudflare.com/client/v4/zones/zone/purge_cache"


class RaisingPurger(BasePurger):
    """A purger whose client library puts its token, repr()-escaped, in an exception."""

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        raise ValueError(f"Invalid header value {self.options['TOKEN']!r}")

    def purge_all(self) -> PurgeResult:
        raise ValueError(f"Invalid header value {self.options['TOKEN']!r}")


def raising_dispatcher(row_ids: list[int], using: str) -> None:
    raise ConnectionError(f"broker refused credentials {' ' + DISPATCH_CORE + chr(10)!r}")


@pytest.fixture
def leaky(settings: Any) -> dict[str, str]:
    tokens = {
        "fastly": f"  {FASTLY_CORE}\n",
        "cloudflare": f"{CLOUDFLARE_CORE}\r\n",
        "raising": f'"{RAISING_CORE}"',
    }
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "PURGE_ASYNC": False,
        "PURGERS": {
            "fastly": {
                "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
                "SERVICE_ID": "svc",
                "API_TOKEN": tokens["fastly"],
            },
            "cloudflare": {
                "BACKEND": "django_tiercache.purgers.cloudflare.CloudflarePurger",
                "ZONE_ID": "zone",
                "API_TOKEN": tokens["cloudflare"],
            },
            "raising": {"BACKEND": "tests.test_secrets.RaisingPurger", "TOKEN": tokens["raising"]},
            "dispatch": {
                "BACKEND": "django_tiercache.purgers.locmem.LocMemPurger",
                "PASSWORD": f" {DISPATCH_CORE}\n",
            },
        },
    }
    return tokens


def echoes(token: str) -> list[str]:
    """The ways an API or a library might echo a token back."""
    return [token, repr(token), json.dumps(token), token.strip()]


def assert_no_token(*texts: str) -> None:
    for text in texts:
        for core in CORES:
            assert core not in text, f"{core} leaked in: {text[:2000]}"


@pytest.fixture
def api() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def test_tokens_never_leak_through_any_failure(
    leaky: dict[str, str],
    api: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fastly, cloudflare = leaky["fastly"], leaky["cloudflare"]
    for echo in echoes(fastly):
        api.add(responses.POST, FASTLY_URL, status=401, json={"msg": f"bad key {echo}"})
    api.add(responses.POST, FASTLY_URL, body=requests.ConnectionError(f"reset {fastly!r}"))
    api.add(responses.POST, FASTLY_URL, status=503, body=f"Fastly-Key: {fastly}")
    for echo in echoes(cloudflare):
        body = {"success": False, "errors": [{"code": 10000, "message": f"Bearer {echo}"}]}
        api.add(responses.POST, CLOUDFLARE_URL, status=403, json=body)
    api.add(responses.POST, CLOUDFLARE_URL, status=500, body=f"Authorization: Bearer {cloudflare}")

    caplog.set_level(logging.DEBUG)
    for round_ in range(6):
        with django_capture_on_commit_callbacks(execute=True):
            invalidate(f"secret-test:{round_}")
    with pytest.raises(CommandError) as failed:
        call_command("tiercache_purge", "--redrive", "--sync", "--older-than", "0")

    rows = list(PurgeRequest.objects.values("last_error", "results"))
    assert rows
    assert all(row["last_error"] for row in rows)  # failures were recorded
    root = User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    pages = [client.get("/admin/django_tiercache/purgerequest/").content.decode()]
    pages += [
        client.get(f"/admin/django_tiercache/purgerequest/{pk}/change/").content.decode()
        for pk in PurgeRequest.objects.values_list("pk", flat=True)
    ]
    output = capsys.readouterr()
    assert_no_token(
        caplog.text, json.dumps(rows), *pages, output.out, output.err, str(failed.value)
    )
    assert MASK in caplog.text + json.dumps(rows)  # the echoes were there, masked


def test_a_dispatcher_error_quoting_a_secret_is_logged_masked(
    leaky: dict[str, str],
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "DISPATCHER": "tests.test_secrets.raising_dispatcher",
    }
    with django_capture_on_commit_callbacks(execute=True):
        invalidate("secret-test:dispatch")
    assert "could not dispatch" in caplog.text
    assert_no_token(caplog.text)
    assert MASK in caplog.text


@pytest.mark.parametrize("token", ["tok-abc123\n", " tok-abc123 ", "tok-abc123\r\n"])
def test_whitespace_around_a_token_is_stripped_before_use(
    settings: Any, api: responses.RequestsMock, token: str
) -> None:
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "PURGERS": {
            "fastly": {
                "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
                "SERVICE_ID": "svc",
                "API_TOKEN": token,
            }
        },
    }
    api.add(responses.POST, FASTLY_URL, json={"k": "purge-1"})
    from django_tiercache.edge.purgers import get_purgers

    assert get_purgers()["fastly"].purge_keys(["k"]).ok
    assert api.calls[0].request.headers["Fastly-Key"] == "tok-abc123"
    (warning,) = check_purger_secrets()
    assert warning.id == "tiercache.W005"
    assert "tok-abc123" not in warning.msg + str(warning.hint)


@pytest.mark.parametrize(
    "token", ['"tok-abc123"', "tok abc123", "tok-abc\n123", "", "tok-ä123", 12345]
)
def test_a_token_that_cannot_be_sent_is_a_check_error(settings: Any, token: object) -> None:
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "PURGERS": {
            "cf": {
                "BACKEND": "django_tiercache.purgers.cloudflare.CloudflarePurger",
                "ZONE_ID": "zone",
                "API_TOKEN": token,
            }
        },
    }
    from django_tiercache.edge.checks import check_purgers

    messages = [*check_purger_secrets(), *check_purgers()]
    ids = [message.id for message in messages]
    if token == "":
        assert "tiercache.E005" in ids  # a required option left empty
    else:
        assert "tiercache.E008" in ids
    for message in messages:
        assert "abc123" not in message.msg + str(message.hint)


@pytest.mark.parametrize("secret", ["tok-xyz789\n", ' "tok-xyz789" ', "tok-x'y\"z\\789"])
def test_redact_masks_every_escaped_form(settings: Any, secret: str) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGERS": {"p": {"BACKEND": "x", "TOKEN": secret}}}
    core = secret.strip().strip('"')
    for text in (secret, repr(secret), json.dumps(secret), repr(core), json.dumps(core)):
        masked = redact(f"error: {text} end")
        assert core not in masked, text
        assert MASK in masked, text
        assert masked.startswith("error:"), text
        assert masked.endswith("end"), text
