"""What each public Django call on the middleware's path costs, beside its private shortcut.

Run from the repository root::

    .venv/bin/python benchmarks/http_calls.py

The middleware uses only Django's public API (``response.headers[...]``, ``patch_vary_headers``,
``set_response_etag``, ``get_conditional_response``). An earlier version wrote into Django's
private ``ResponseHeaders._store`` and hashed the body itself; this script measures, call by call
and in one process, what the public form costs more, and how many times a request of
``benchmarks/http_overhead.py`` (an anonymous ``origin_cache`` GET with 20 keys) makes it. The
private forms appear here only to be measured: the package does not use them.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from typing import Any

import django
from django.conf import settings

# (name, calls per request, public form, private form); each takes a fresh response per call.
Case = tuple[str, int, Callable[[Any, Any], object], Callable[[Any, Any], object]]


def configure() -> None:
    settings.configure(DEBUG=False, SECRET_KEY="benchmark", ALLOWED_HOSTS=["testserver"])
    django.setup()


def cases() -> list[Case]:
    from django.utils.cache import get_conditional_response, patch_vary_headers, set_response_etag

    sha256 = hashlib.sha256()

    def weak_etag(response: Any) -> None:
        digest = sha256.copy()
        digest.update(response.content)
        response.headers._store["etag"] = ("ETag", f'W/"{digest.hexdigest()[:32]}"')

    def set_header(response: Any, _: Any) -> None:
        response.headers["Surrogate-Control"] = "max-age=600, stale-while-revalidate=60"

    def set_store(response: Any, _: Any) -> None:
        value = "max-age=600, stale-while-revalidate=60"
        response.headers._store["surrogate-control"] = ("Surrogate-Control", value)

    return [
        ("response.headers[name] = value", 4, set_header, set_store),
        (
            '"Name" in response.headers (absent)',
            4,
            lambda r, _: "Cache-Control" in r.headers,
            lambda r, _: "cache-control" in r.headers._store,
        ),
        (
            'response.headers.get("Name") (absent)',
            1,
            lambda r, _: r.headers.get("Cache-Control"),
            lambda r, _: r.headers._store.get("cache-control"),
        ),
        (
            'patch_vary_headers(response, ["Accept-Encoding"])',
            1,
            lambda r, _: patch_vary_headers(r, ["Accept-Encoding"]),
            lambda r, _: r.headers._store.__setitem__("vary", ("Vary", "Accept-Encoding")),
        ),
        (
            # 0 per request in the total: both forms hash the body once, and a 10 KB hash moves
            # with memory traffic by more than their difference.
            "set_response_etag (MD5, 10 KB) vs weak SHA-256",
            0,
            lambda r, _: set_response_etag(r),
            lambda r, _: weak_etag(r),
        ),
        (
            # 0 per request: the middleware calls it only for a request with a conditional header.
            "get_conditional_response, no conditional header",
            0,
            lambda r, q: get_conditional_response(q, etag='"x"', response=r),
            lambda r, q: "HTTP_IF_NONE_MATCH" in q.META or "HTTP_IF_MODIFIED_SINCE" in q.META,
        ),
    ]


def time_call(
    call: Callable[[Any, Any], object], body: bytes, request: Any, number: int, repeat: int
) -> float:
    """µs of one ``call``, each on a response of its own built beforehand: the fastest of
    ``repeat`` runs (on a shared machine, other work only ever adds time)."""
    from django.http import HttpResponse

    best = float("inf")
    for _ in range(repeat):
        responses = [HttpResponse(body) for _ in range(number)]
        start = time.perf_counter()
        for response in responses:
            call(response, request)
        best = min(best, time.perf_counter() - start)
    return best / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body-bytes", type=int, default=10_000)
    parser.add_argument("--number", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    configure()
    from django.test import RequestFactory

    request = RequestFactory().get("/page/")
    body = b"<p>product row</p>" * (args.body_bytes // 18)
    print(f"µs per call (fastest of {args.repeat} x {args.number}), body {len(body)} bytes")
    print()
    header = f"{'call':52} {'per req':>7} {'public':>8} {'private':>8} {'extra/req':>10}"
    print(header)
    print("-" * len(header))
    total = 0.0
    for name, per_request, public, private in cases():
        cost = time_call(public, body, request, args.number, args.repeat)
        shortcut = time_call(private, body, request, args.number, args.repeat)
        extra = (cost - shortcut) * per_request
        total += extra
        print(f"{name:52} {per_request:>7} {cost:>8.2f} {shortcut:>8.2f} {extra:>10.2f}")
    print("-" * len(header))
    print(f"{'public API, extra per request':52} {'':>7} {'':>8} {'':>8} {total:>10.2f}")
    print()
    print("Rows counted 0 per request are shown, not added: get_conditional_response runs only")
    print("for conditional requests; both ETag forms hash the body once (that row is noisy).")


if __name__ == "__main__":
    main()
