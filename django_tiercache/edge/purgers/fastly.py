"""Fastly: purge surrogate keys in batches of 256 with the bulk purge API, soft by default."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace

import requests

from django_tiercache.edge.purgers.base import PurgerConfigError, PurgeResult
from django_tiercache.edge.purgers.http_api import HttpPurger, display_url

API_URL = "https://api.fastly.com"
#: Most keys Fastly accepts in one bulk purge (``POST /service/{id}/purge``).
MAX_KEYS = 256


class FastlyPurger(HttpPurger):
    """``POST {API_URL}/service/{SERVICE_ID}/purge`` with ``{"surrogate_keys": [...]}``.

    The keys travel in the JSON body rather than the ``Surrogate-Key`` header: 256 keys of up to
    1,024 bytes each would not fit the header limits on the way. Options:

    - ``SERVICE_ID``, ``API_TOKEN`` (required; the token needs the ``purge_select`` scope, and
      ``purge_all`` for :meth:`purge_all`);
    - ``SOFT_PURGE`` (default ``True``): mark objects stale (``Fastly-Soft-Purge: 1``) instead of
      evicting them, so Fastly can serve stale while it revalidates;
    - ``DOUBLE_PURGE`` (default ``False``) and ``DOUBLE_PURGE_DELAY`` (default 2 s): purge every
      key again after the delay, for services with shielding, where an edge node may refetch the
      old object from a shield that had not purged yet;
    - ``ENVIRONMENT`` (default ``None``): ``"staging"`` purges the staging environment;
    - ``API_URL`` (default ``https://api.fastly.com``), ``CONNECT_TIMEOUT``, ``READ_TIMEOUT``.
    """

    required_options = ("SERVICE_ID", "API_TOKEN")
    default_max_keys_per_request = MAX_KEYS
    #: Waits between the two rounds of a double purge; replaceable in tests.
    sleep = staticmethod(time.sleep)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.api_url = str(self.options.get("API_URL", API_URL)).rstrip("/")
        self.service_url = f"{self.api_url}/service/{self.options['SERVICE_ID']}"
        self.double_purge = bool(self.options.get("DOUBLE_PURGE", False))
        delay = self.options.get("DOUBLE_PURGE_DELAY", 2.0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 60:
            raise PurgerConfigError(
                f"Purger {self.name!r}: DOUBLE_PURGE_DELAY must be 0-60 seconds, got {delay!r:.40}"
            )
        self.double_purge_delay = float(delay)
        environment = self.options.get("ENVIRONMENT")
        if environment not in (None, "staging"):
            raise PurgerConfigError(
                f"Purger {self.name!r}: ENVIRONMENT must be None or 'staging', "
                f"got {environment!r:.40}"
            )
        self.environment: str | None = environment

    @property
    def soft_purge(self) -> bool:
        return bool(self.options.get("SOFT_PURGE", True))

    def _headers(self, *, soft: bool = False) -> dict[str, str]:
        headers = {"Fastly-Key": self.secret("API_TOKEN"), "Accept": "application/json"}
        if soft:
            headers["Fastly-Soft-Purge"] = "1"
        if self.environment:
            headers["Fastly-Purge-Environment"] = self.environment
        return headers

    def purge_keys(self, keys: Iterable[str], soft: bool | None = None) -> PurgeResult:
        """Purge ``keys`` in batches of 256; with ``DOUBLE_PURGE``, all of them again later."""
        keys = sorted(set(keys))
        first = super().purge_keys(keys, soft)
        if not (self.double_purge and first.ok and keys):
            return first
        self.sleep(self.double_purge_delay)
        second = super().purge_keys(keys, soft)
        if not second.ok:
            return second
        return replace(first, request_ids=first.request_ids + second.request_ids)

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        return self.request(
            "POST",
            f"{self.service_url}/purge",
            tuple(keys),
            headers=self._headers(soft=soft),
            json={"surrogate_keys": keys},
        )

    def purge_all(self) -> PurgeResult:
        """``POST /service/{id}/purge_all``: evicts everything; Fastly never does it softly."""
        return self.request("POST", f"{self.service_url}/purge_all", headers=self._headers())

    def describe_calls(self, keys: list[str] | None, *, soft: bool | None = None) -> list[str]:
        """``POST .../purge`` with the keys in the body (``.../purge_all`` for everything)."""
        where = display_url(self.service_url)
        if keys is None:
            return [f"POST {where}/purge_all"]
        soft = self.soft_purge if soft is None else soft
        call = f'POST {where}/purge {{"surrogate_keys": [{len(keys)} keys]}}'
        calls = [call + (" Fastly-Soft-Purge: 1" if soft else "")]
        if self.double_purge:
            calls.append(f"the same again after {self.double_purge_delay:g}s (DOUBLE_PURGE)")
        return calls

    def success(self, response: requests.Response, keys: tuple[str, ...]) -> PurgeResult:
        """A bulk purge answers ``{key: purge id}``; a purge-all answers ``{"status": "ok"}``."""
        try:
            body = response.json()
        except ValueError:
            body = None
        ids: tuple[str, ...] = ()
        if isinstance(body, dict):
            if "status" in body or "id" in body:
                ids = (str(body["id"]),) if body.get("id") else ()
            else:
                ids = tuple(str(value) for value in body.values())
        return PurgeResult(ok=True, keys=keys, request_ids=ids, status_code=response.status_code)
