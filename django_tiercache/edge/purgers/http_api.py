"""``HttpPurger``: the HTTP plumbing shared by the Fastly, Cloudflare and Varnish purgers.

One :class:`requests.Session` per purger instance (created on first use, again after a fork), so
connections are reused between calls; every call has a connect and a read timeout. Responses map to
:class:`PurgeResult` the same way for every backend:

- 2xx: ok (a backend may still read a failure from the body, like Cloudflare's envelope);
- 429: retryable, ``retry_after`` from ``Retry-After`` (seconds or HTTP date) or
  ``Fastly-RateLimit-Reset`` (UTC epoch seconds);
- 408, 5xx, timeouts, connection errors: retryable (the task backs off with jitter);
- any other 4xx (400, 401, 403, 404…): not retryable, with the API's own error message.

Error text never holds a secret: the purger's own secret options are masked, and so is every
secret in ``TIERCACHE["PURGERS"]``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests

from django_tiercache import __version__
from django_tiercache.edge.purgers.base import (
    BasePurger,
    PurgerConfigError,
    PurgeResult,
    PurgerSecretError,
)
from django_tiercache.redact import redact

#: Default seconds to wait for a TCP connection (``CONNECT_TIMEOUT``).
DEFAULT_CONNECT_TIMEOUT = 3.05
#: Default seconds to wait for the response (``READ_TIMEOUT``).
DEFAULT_READ_TIMEOUT = 10.0
#: Longest wait honoured from ``Retry-After``/``Fastly-RateLimit-Reset``, in seconds.
MAX_RETRY_AFTER = 3600.0
#: Longest API error message kept in a result.
MAX_ERROR_CHARS = 300

USER_AGENT = f"django-tiercache/{__version__}"


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait before retrying, from ``Retry-After`` or ``Fastly-RateLimit-Reset``.

    ``Retry-After`` is delta-seconds or an HTTP date; ``Fastly-RateLimit-Reset`` is a UTC epoch
    time. ``None`` when neither is present and valid; never negative, at most ``MAX_RETRY_AFTER``.
    """
    now = time.time() if now is None else now
    wait: float | None = None
    value = (headers.get("Retry-After") or "").strip()
    if value:
        try:
            wait = float(value)
        except ValueError:
            try:
                wait = parsedate_to_datetime(value).timestamp() - now
            except (TypeError, ValueError, IndexError):
                wait = None
    if wait is None or not math.isfinite(wait):
        reset = (headers.get("Fastly-RateLimit-Reset") or "").strip()
        try:
            wait = float(reset) - now if reset else None
        except ValueError:
            wait = None
    if wait is None or not math.isfinite(wait):
        return None
    return min(max(wait, 0.0), MAX_RETRY_AFTER)


def secret_problem(value: object) -> str | None:
    """Why ``value`` cannot be a token sent in an HTTP header, or None when it can.

    Whitespace around it is allowed (it is stripped); inside, only visible ASCII other than quotes.
    """
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    token = value.strip()
    if not token:
        return "is empty"
    if not all("!" <= char <= "~" and char not in "\"'" for char in token):
        return "contains a space, quote, control or non-ASCII character"
    return None


def check_secret(name: str, option: str, value: object) -> None:
    """Raise :class:`PurgerSecretError` (without the value) when ``value`` cannot be a token."""
    problem = secret_problem(value)
    if problem:
        raise PurgerSecretError(f"Purger {name!r}: {option} {problem}")


def _positive_number(purger: BasePurger, option: str, default: float) -> float:
    value = purger.options.get(option, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise PurgerConfigError(
            f"Purger {purger.name!r}: {option} must be a positive number of seconds, "
            f"got {value!r:.40}"
        )
    return float(value)


class HttpPurger(BasePurger):
    """A purger that talks HTTP. Options ``CONNECT_TIMEOUT`` (3.05 s), ``READ_TIMEOUT`` (10 s).

    Subclasses build requests with :meth:`request` and may refine :meth:`success` (read request
    ids, or a failure hidden in a 2xx body) and :meth:`api_error` (the API's error message).
    """

    #: Option names whose values are secrets, masked in every error text.
    secret_options: ClassVar[tuple[str, ...]] = ("API_TOKEN", "TOKEN")

    _session: requests.Session | None = None
    _session_pid: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for option in self.secret_options:
            if self.options.get(option) not in (None, ""):  # unset: required_options decide
                check_secret(self.name, option, self.options[option])
        self.timeout = (
            _positive_number(self, "CONNECT_TIMEOUT", DEFAULT_CONNECT_TIMEOUT),
            _positive_number(self, "READ_TIMEOUT", DEFAULT_READ_TIMEOUT),
        )

    @property
    def session(self) -> requests.Session:
        """This purger's session, created on first use (and again in a forked child)."""
        if self._session is None or self._session_pid != os.getpid():
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            self._session, self._session_pid = session, os.getpid()
        return self._session

    def close(self) -> None:
        """Close the pooled connections (a new session is made on the next call)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def secret(self, option: str) -> str:
        """The secret ``option`` without the whitespace around it (a newline pasted from a
        secrets file would otherwise end up in the header); ``""`` when not set."""
        return str(self.options.get(option) or "").strip()

    def scrub(self, text: str) -> str:
        """``text`` without any form of this purger's secrets or of any configured one."""
        own = (str(self.options.get(option) or "") for option in self.secret_options)
        return redact(text, extra=own)

    def request(
        self, method: str, url: str, keys: tuple[str, ...] = (), **kwargs: Any
    ) -> PurgeResult:
        """Send one call and map its outcome to a :class:`PurgeResult` for ``keys``."""
        where = display_url(url)
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.Timeout as exc:
            return self.failure(f"{method} {where} timed out: {type(exc).__name__}", keys=keys)
        except requests.RequestException as exc:
            return self.failure(f"{method} {where} failed: {type(exc).__name__}: {exc}", keys=keys)
        status = response.status_code
        if 200 <= status < 300:
            return self.success(response, keys)
        message = f"{method} {where}: HTTP {status}: {self.api_error(response)}"
        if status == 429 or status == 408 or status >= 500:
            return self.failure(
                message,
                keys=keys,
                status_code=status,
                retry_after=retry_after_seconds(response.headers),
            )
        refused = self.failure(message, keys=keys, status_code=status, retryable=False)
        return self.refusal(response, refused)

    def failure(
        self,
        message: str,
        *,
        keys: tuple[str, ...] = (),
        status_code: int | None = None,
        retry_after: float | None = None,
        retryable: bool = True,
    ) -> PurgeResult:
        """A failed result whose error names this purger and holds no secret."""
        return PurgeResult(
            ok=False,
            error=self.scrub(f"{self.name}: {message}"),
            status_code=status_code,
            retry_after=retry_after,
            retryable=retryable,
        )

    def refusal(self, response: requests.Response, result: PurgeResult) -> PurgeResult:
        """The result of a 4xx other than 408/429: permanent, unless a backend knows better."""
        return result

    def success(self, response: requests.Response, keys: tuple[str, ...]) -> PurgeResult:
        """The result of a 2xx response; override to read request ids or a failure body."""
        return PurgeResult(ok=True, keys=keys, status_code=response.status_code)

    def api_error(self, response: requests.Response) -> str:
        """The API's own error message: a JSON ``msg``/``message``/``reason``/``detail``/``error``
        field, else the reason phrase and the start of a plain-text body."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            parts = [
                str(body[f]) for f in ("msg", "message", "reason", "detail", "error") if body.get(f)
            ]
            if parts:
                return _shorten(": ".join(parts))
        text = (
            response.text.strip()
            if "text/plain" in response.headers.get("Content-Type", "")
            else ""
        )
        return _shorten(" ".join(filter(None, [response.reason or "", text])) or "no message")


def display_url(url: str) -> str:
    """``url`` as messages show it: scheme, host and path, no credentials or query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return redact(f"{parts.scheme}://{host}{parts.path}")


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
