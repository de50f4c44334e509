"""Varnish (7, with the varnish-modules ``xkey`` vmod): ``PURGE`` requests carrying the keys.

The shipped ``docs/varnish.vcl`` reads exactly what this purger sends: a ``PURGE`` with the keys
in ``xkey`` (hard purge) or ``xkey-softpurge`` (soft purge), a ``BAN`` for :meth:`purge_all`, and
the shared secret in ``X-Purge-Token``; requests come from an address in its ``purgers`` ACL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from django_tiercache.edge.purgers.base import PurgerConfigError, PurgeResult
from django_tiercache.edge.purgers.http_api import HttpPurger, display_url

#: Default ``MAX_HEADER_BYTES``: half of Varnish's default ``http_req_hdr_len`` (8 KiB).
DEFAULT_MAX_HEADER_BYTES = 4096
#: The smallest ``MAX_HEADER_BYTES``: one key of the longest size (1,024 bytes) must fit.
MIN_HEADER_BYTES = 1100
#: Varnish refuses a request header longer than this by default (``http_req_hdr_len``).
VARNISH_HDR_LEN = 8192

DEFAULTS: dict[str, Any] = {
    "KEY_HEADER": "xkey",
    "SOFT_KEY_HEADER": "xkey-softpurge",
    "TOKEN_HEADER": "X-Purge-Token",
    "MAX_HEADER_BYTES": DEFAULT_MAX_HEADER_BYTES,
    "MAX_KEYS_PER_REQUEST": 256,
}


class VarnishPurger(HttpPurger):
    """``PURGE`` each URL in ``URLS`` with the keys in one header, space-separated.

    Options (defaults in :data:`DEFAULTS`): ``URLS`` (required: a non-empty list, one URL per
    Varnish server); ``TOKEN`` (the secret the VCL expects, sent in ``TOKEN_HEADER``);
    ``KEY_HEADER`` / ``SOFT_KEY_HEADER`` / ``TOKEN_HEADER`` (header names); ``SOFT_PURGE``
    (default ``False``: a soft purge serves the stale object once more while Varnish refetches);
    ``MAX_HEADER_BYTES`` (a whole key header line, name included, stays at or below it; default
    4,096, must stay below 8,192); ``MAX_KEYS_PER_REQUEST`` (256); ``CONNECT_TIMEOUT``,
    ``READ_TIMEOUT``.
    """

    required_options = ("URLS",)

    def __post_init__(self) -> None:
        super().__post_init__()
        urls = self.options["URLS"]
        if isinstance(urls, str) or not all(
            isinstance(url, str) and url.startswith(("http://", "https://")) for url in urls
        ):
            raise PurgerConfigError(
                f"Purger {self.name!r}: URLS must be a list of http(s):// URLs of Varnish servers"
            )
        self.urls: list[str] = list(urls)
        options = {**DEFAULTS, **self.options}
        for header in ("KEY_HEADER", "SOFT_KEY_HEADER", "TOKEN_HEADER"):
            value = options[header]
            if not (
                isinstance(value, str) and value.isascii() and value.replace("-", "").isalnum()
            ):
                raise PurgerConfigError(
                    f"Purger {self.name!r}: {header} must be an HTTP header name, got {value!r:.40}"
                )
        self.key_header: str = options["KEY_HEADER"]
        self.soft_key_header: str = options["SOFT_KEY_HEADER"]
        self.token_header: str = options["TOKEN_HEADER"]
        limit, count = options["MAX_HEADER_BYTES"], options["MAX_KEYS_PER_REQUEST"]
        if not (_is_int(limit) and MIN_HEADER_BYTES <= limit < VARNISH_HDR_LEN):
            raise PurgerConfigError(
                f"Purger {self.name!r}: MAX_HEADER_BYTES must be an integer from "
                f"{MIN_HEADER_BYTES} to {VARNISH_HDR_LEN - 1}, got {limit!r:.40}"
            )
        if not (_is_int(count) and count >= 1):
            raise PurgerConfigError(
                f"Purger {self.name!r}: MAX_KEYS_PER_REQUEST must be a positive integer"
            )
        self.max_header_bytes: int = limit
        self._max_keys: int = count

    @property
    def max_keys_per_request(self) -> int:
        return self._max_keys

    def batches(self, keys: Iterable[str]) -> Iterator[list[str]]:
        """Sorted unique keys, packed so that ``<header>: k1 k2 …`` fits ``MAX_HEADER_BYTES``.

        The longer of the two key header names is counted, so a batch fits either way.
        """
        overhead = max(len(self.key_header), len(self.soft_key_header)) + 2  # "name: "
        batch: list[str] = []
        size = overhead
        for key in sorted(set(keys)):
            length = len(key.encode())
            if batch and (
                size + 1 + length > self.max_header_bytes or len(batch) >= self._max_keys
            ):
                yield batch
                batch, size = [], overhead
            size += length + (1 if batch else 0)
            batch.append(key)
        if batch:
            yield batch

    def _headers(self) -> dict[str, str]:
        token = self.secret("TOKEN")
        return {self.token_header: token} if token else {}

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        headers = {
            **self._headers(),
            self.soft_key_header if soft else self.key_header: " ".join(keys),
        }
        return self._each_url("PURGE", headers, tuple(keys))

    def purge_all(self) -> PurgeResult:
        """``BAN`` each URL: the shipped VCL bans every object (``ban("obj.status != 0")``)."""
        return self._each_url("BAN", self._headers())

    def describe_calls(self, keys: list[str] | None, *, soft: bool | None = None) -> list[str]:
        """A ``PURGE`` with the keys in the key header to each URL (``BAN`` for everything)."""
        if keys is None:
            return [f"BAN {display_url(url)}" for url in self.urls]
        soft = self.soft_purge if soft is None else soft
        header = self.soft_key_header if soft else self.key_header
        return [f"PURGE {display_url(url)} {header}: <{len(keys)} keys>" for url in self.urls]

    def _each_url(
        self, method: str, headers: dict[str, str], keys: tuple[str, ...] = ()
    ) -> PurgeResult:
        """Every Varnish server must succeed; later servers are still called after a failure."""
        results = [self.request(method, url, keys, headers=headers) for url in self.urls]
        merged = PurgeResult.merge(results)
        return merged if not merged.ok else PurgeResult(ok=True, keys=keys)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
