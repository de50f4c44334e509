"""Cloudflare: purge cache tags in batches of ``BATCH_SIZE`` and read the API's envelope."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import requests

from django_tiercache.edge.purgers.base import PurgerConfigError, PurgeResult
from django_tiercache.edge.purgers.http_api import HttpPurger, display_url, retry_after_seconds

API_URL = "https://api.cloudflare.com/client/v4"
#: Default items per purge call (Cloudflare's historical limit).
DEFAULT_BATCH_SIZE = 30
#: Most tags, hosts, prefixes or files Cloudflare accepts in one call.
MAX_BATCH_SIZE = 100

#: Envelope error codes that say "later": the same call may succeed then (retried, with the
#: ``Retry-After`` when the response has one). Any other code in a ``success: false`` answer that
#: is not a 408, 429 or 5xx is a refusal an operator has to look at.
#: 971: "Please wait and consider throttling your request speed" (the API's throttle, seen in
#: the wild although the OpenAPI schema gives codes from 1000);
#: 1015: "You are being rate limited" (a rate-limiting rule in front of the API).
TRANSIENT_ERROR_CODES = frozenset({971, 1015})

#: A URL to purge, or ``{"url": ..., "headers": {...}}`` for custom cache keys.
FileSpec = str | Mapping[str, Any]


class CloudflarePurger(HttpPurger):
    """``POST {API_URL}/zones/{ZONE_ID}/purge_cache`` with ``{"tags": [...]}``.

    Options: ``ZONE_ID``, ``API_TOKEN`` (required; an API token with the Zone > Cache Purge
    permission, sent as ``Authorization: Bearer``); ``BATCH_SIZE`` (default 30, at most 100: the
    items per call your plan allows); ``API_URL``, ``CONNECT_TIMEOUT``, ``READ_TIMEOUT``.

    Cloudflare has no soft purge: ``soft`` is ignored. A response is a success only when its
    envelope says ``"success": true``; an HTTP 200 with ``"success": false`` is a failure,
    transient when an error code is in :data:`TRANSIENT_ERROR_CODES`, permanent otherwise. A
    4xx carrying a transient code (a throttle) is transient too.
    """

    required_options = ("ZONE_ID", "API_TOKEN")
    default_max_keys_per_request = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        super().__post_init__()
        size = self.options.get("BATCH_SIZE", DEFAULT_BATCH_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
            raise PurgerConfigError(
                f"Purger {self.name!r}: BATCH_SIZE must be an integer from 1 to "
                f"{MAX_BATCH_SIZE}, got {size!r:.40}"
            )
        self.batch_size = size
        api_url = str(self.options.get("API_URL", API_URL)).rstrip("/")
        self.purge_url = f"{api_url}/zones/{self.options['ZONE_ID']}/purge_cache"

    @property
    def max_keys_per_request(self) -> int:
        return self.batch_size

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        return self._post({"tags": keys}, tuple(keys))

    def purge_all(self) -> PurgeResult:
        """``{"purge_everything": true}``."""
        return self._post({"purge_everything": True})

    def purge_hosts(self, hosts: Iterable[str]) -> PurgeResult:
        """Purge everything cached for these hostnames (``{"hosts": [...]}``)."""
        return self._purge_items("hosts", sorted(set(hosts)))

    def purge_prefixes(self, prefixes: Iterable[str]) -> PurgeResult:
        """Purge every URL under these prefixes, e.g. ``www.example.com/shop/``."""
        return self._purge_items("prefixes", sorted(set(prefixes)))

    def purge_files(self, files: Iterable[FileSpec]) -> PurgeResult:
        """Purge single URLs; give ``{"url": ..., "headers": {...}}`` for custom cache keys.

        Plain URLs and URL-with-headers objects go in separate calls, as the API requires.
        """
        files = list(files)
        urls = [f for f in files if isinstance(f, str)]
        objects = [dict(f) for f in files if not isinstance(f, str)]
        results = [self._purge_items("files", items) for items in (urls, objects) if items]
        return PurgeResult.merge(results)

    def _purge_items(self, field: str, items: Sequence[Any]) -> PurgeResult:
        results: list[PurgeResult] = []
        for start in range(0, len(items), self.batch_size):
            batch = list(items[start : start + self.batch_size])
            labels = tuple(
                item if isinstance(item, str) else str(item.get("url")) for item in batch
            )
            results.append(self._post({field: batch}, labels))
            if not results[-1].ok:
                break
        return PurgeResult.merge(results)

    def _post(self, body: dict[str, Any], keys: tuple[str, ...] = ()) -> PurgeResult:
        headers = {"Authorization": f"Bearer {self.secret('API_TOKEN')}"}
        return self.request("POST", self.purge_url, keys, headers=headers, json=body)

    def describe_calls(self, keys: list[str] | None, *, soft: bool | None = None) -> list[str]:
        """``POST .../purge_cache`` with ``{"tags": [...]}`` (``purge_everything`` for all)."""
        body = '{"purge_everything": true}' if keys is None else f'{{"tags": [{len(keys)} tags]}}'
        return [f"POST {display_url(self.purge_url)} {body}"]

    def success(self, response: requests.Response, keys: tuple[str, ...]) -> PurgeResult:
        """Read ``{"success", "errors", "result": {"id"}}``; ``success: false`` is a refusal."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):  # not the API answering (a proxy page?): try again later
            return self.failure(
                f"HTTP {response.status_code} without a JSON envelope",
                keys=keys,
                status_code=response.status_code,
            )
        if body.get("success") is not True:
            transient = bool(error_codes(body) & TRANSIENT_ERROR_CODES)
            return self.failure(
                f"HTTP {response.status_code} with success=false: {self.api_error(response)}",
                keys=keys,
                status_code=response.status_code,
                retry_after=retry_after_seconds(response.headers) if transient else None,
                retryable=transient,
            )
        result = body.get("result")
        request_id = result.get("id") if isinstance(result, dict) else None
        return PurgeResult(
            ok=True,
            keys=keys,
            request_ids=(str(request_id),) if request_id else (),
            status_code=response.status_code,
        )

    def refusal(self, response: requests.Response, result: PurgeResult) -> PurgeResult:
        """A 4xx is permanent unless its envelope carries a transient code (a throttle)."""
        try:
            body = response.json()
        except ValueError:
            return result
        if isinstance(body, dict) and error_codes(body) & TRANSIENT_ERROR_CODES:
            return replace(
                result, retryable=True, retry_after=retry_after_seconds(response.headers)
            )
        return result

    def api_error(self, response: requests.Response) -> str:
        """``"<code>: <message>"`` for each entry of the envelope's ``errors``."""
        try:
            body = response.json()
        except ValueError:
            body = None
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list) and errors:
            return "; ".join(
                f"{e.get('code')}: {e.get('message')}" if isinstance(e, dict) else str(e)
                for e in errors
            )
        return super().api_error(response)


def error_codes(body: Mapping[str, Any]) -> set[int]:
    """The integer ``code`` of each entry of an envelope's ``errors``."""
    errors = body.get("errors")
    if not isinstance(errors, list):
        return set()
    return {e["code"] for e in errors if isinstance(e, dict) and isinstance(e.get("code"), int)}
