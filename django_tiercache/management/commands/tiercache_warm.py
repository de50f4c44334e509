"""``manage.py tiercache_warm``: fill the query tier (warmers) and the origin and edge (pages).

Pages are fetched with GET, ``--concurrency`` at a time, so a CDN in front of the site caches
them too. A progress bar is drawn on a terminal, one line per page otherwise; a summary ends the
run. The exit status is 1 when any page or warmer failed, 2 for a bad command line.
"""

from __future__ import annotations

import gzip
import sys
import threading
import time
import traceback
from argparse import ArgumentParser, ArgumentTypeError
from collections import Counter
from collections.abc import Generator, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from xml.etree import ElementTree

import requests
from django.core.management.base import BaseCommand, CommandError

from django_tiercache import __version__, stats
from django_tiercache.warmers import WarmerError, get_warmers

USER_AGENT = f"django-tiercache-warm/{__version__}"
#: Headers that tell whether a cache answered (Fastly/Varnish/Squid, Cloudflare, nginx).
CACHE_STATUS_HEADERS = ("X-Cache", "CF-Cache-Status", "X-Cache-Status")
#: Sitemap indexes are followed this deep (the protocol allows one level).
MAX_SITEMAP_DEPTH = 3
PROGRESS_WIDTH = 30


@dataclass(frozen=True)
class Outcome:
    """What warming one page, sitemap or warmer gave."""

    target: str
    ok: bool
    status: int | None = None
    cache: str = ""
    error: str = ""
    seconds: float = 0.0

    def describe(self) -> str:
        status = str(self.status) if self.status is not None else "ERR"
        details = f" {self.error}" if self.error else ""
        return f"{status} {self.cache or '-'} {self.seconds:.2f}s {self.target}{details}"


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ArgumentTypeError("must be at least 1")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ArgumentTypeError("must be a positive number of seconds")
    return number


def cache_status(headers: requests.structures.CaseInsensitiveDict[str]) -> str:
    """``HIT``, ``MISS``… from ``X-Cache``-like headers, else from ``Age``; "" when unknown.

    With several values (Fastly's ``MISS, HIT``: shield, then edge) the last one, from the cache
    nearest to us, is kept.
    """
    for name in CACHE_STATUS_HEADERS:
        value = headers.get(name, "").split(",")[-1].strip()
        if value:
            return value.split()[0].upper()
    age = headers.get("Age", "").strip()
    if age.isdigit():
        return "HIT" if int(age) > 0 else "MISS"
    return ""


def check_url(url: str) -> None:
    """Refuse anything but an absolute http(s) URL (exit status 2)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"Not an absolute http(s) URL: {url!r}", returncode=2)


def _local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def sitemap_locations(document: bytes) -> tuple[str, list[str]]:
    """The root element (``urlset`` or ``sitemapindex``) and the ``<loc>`` of each entry."""
    if document[:2] == b"\x1f\x8b":  # sitemap.xml.gz served without Content-Encoding
        document = gzip.decompress(document)
    # The operator's own sitemap; expat (>= 2.4.1) refuses entity-expansion bombs and never
    # fetches external entities.
    root = ElementTree.fromstring(document)  # noqa: S314
    locations = [
        (loc.text or "").strip()
        for entry in root
        if _local_name(entry.tag) in ("url", "sitemap")
        for loc in entry
        if _local_name(loc.tag) == "loc"
    ]
    return _local_name(root.tag), [loc for loc in locations if loc]


class Command(BaseCommand):
    help = (
        "Warm the caches: run the query-tier warmers (--queries) and GET pages (--url, "
        "--urls-file, --sitemap) so the origin and the edge cache them."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--queries", action="store_true", help="Run the registered query-tier warmers."
        )
        parser.add_argument(
            "--url",
            nargs="+",
            action="extend",
            default=[],
            dest="urls",
            metavar="URL",
            help="Absolute URLs of pages to GET. Repeatable.",
        )
        parser.add_argument(
            "--urls-file",
            action="append",
            default=[],
            dest="url_files",
            metavar="FILE",
            help="A file with one URL per line ('#' starts a comment; '-' reads stdin).",
        )
        parser.add_argument(
            "--sitemap",
            action="append",
            default=[],
            dest="sitemaps",
            metavar="URL",
            help="A sitemap or sitemap index URL; every page it lists is warmed.",
        )
        parser.add_argument(
            "--concurrency",
            type=positive_int,
            default=4,
            metavar="N",
            help="Pages fetched at once (default 4).",
        )
        parser.add_argument(
            "--timeout",
            type=positive_float,
            default=10.0,
            metavar="SECONDS",
            help="Connect and read timeout of each request (default 10).",
        )
        parser.add_argument(
            "--user-agent", default=USER_AGENT, help=f"User-Agent header (default {USER_AGENT})."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not (
            options["queries"] or options["urls"] or options["url_files"] or options["sitemaps"]
        ):
            raise CommandError(
                "Nothing to warm: give --queries, --url, --urls-file or --sitemap.", returncode=2
            )
        self.verbosity: int = options["verbosity"]
        self.timeout: float = options["timeout"]
        self.user_agent: str = options["user_agent"]
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        try:
            self.warm(options)
        finally:
            for session in self._sessions:
                session.close()

    def warm(self, options: dict[str, Any]) -> None:
        urls = list(options["urls"])
        for path in options["url_files"]:
            urls += self.read_urls_file(path)
        for url in urls:
            check_url(url)
        for url in options["sitemaps"]:
            check_url(url)

        started = time.monotonic()
        failures: list[Outcome] = []
        summary: list[str] = []
        if options["queries"]:
            failures += self.run_warmers(summary)
        if options["sitemaps"]:
            found, sitemap_failures = self.expand_sitemaps(options["sitemaps"])
            urls += found
            failures += sitemap_failures
        pages = self.warm_pages(list(dict.fromkeys(urls)), options["concurrency"])
        failures += [page for page in pages if not page.ok]
        warmed = sum(page.ok for page in pages)
        if urls or options["sitemaps"]:
            summary.insert(0, f"Pages: {warmed} warmed, {len(pages) - warmed} failed")
        seen = Counter(page.cache or "unknown" for page in pages if page.status is not None)
        if seen:
            summary.append(
                "Cache status: " + ", ".join(f"{name} {n}" for name, n in sorted(seen.items()))
            )
        for line in summary:
            self.stdout.write(line)
        if failures:
            self.stdout.write(self.style.ERROR(f"Failures ({len(failures)}):"))
            for failure in failures:
                self.stdout.write(f"  {failure.describe()}")
        self.stdout.write(f"Elapsed: {time.monotonic() - started:.1f}s")
        if failures:
            raise CommandError(f"{len(failures)} failure(s) while warming.")

    # -- inputs ---------------------------------------------------------------------------------

    def read_urls_file(self, path: str) -> list[str]:
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read --urls-file {path!r}: {exc}", returncode=2) from exc
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return [line for line in lines if line]

    def expand_sitemaps(self, sitemaps: Iterable[str]) -> tuple[list[str], list[Outcome]]:
        """Every page URL listed by ``sitemaps``, following sitemap indexes."""
        pages: list[str] = []
        failures: list[Outcome] = []
        seen: set[str] = set()
        todo = [(url, 0) for url in sitemaps]
        while todo:
            url, depth = todo.pop(0)
            if url in seen:
                continue
            seen.add(url)
            outcome, document = self.fetch(url)
            if document is None:
                failures.append(outcome)
                continue
            try:
                kind, locations = sitemap_locations(document)
            except (ElementTree.ParseError, OSError, EOFError) as exc:
                failures.append(Outcome(url, ok=False, status=outcome.status, error=f"{exc}"))
                continue
            if kind == "sitemapindex" and depth < MAX_SITEMAP_DEPTH:
                todo += [(location, depth + 1) for location in locations]
            elif kind == "urlset":
                pages += locations
            else:
                error = f"not a sitemap: <{kind}> (or nested deeper than {MAX_SITEMAP_DEPTH})"
                failures.append(Outcome(url, ok=False, status=outcome.status, error=error))
            if self.verbosity:
                self.stdout.write(f"sitemap {url}: {len(locations)} entries ({kind})")
        return pages, failures

    # -- queries --------------------------------------------------------------------------------

    def run_warmers(self, summary: list[str]) -> list[Outcome]:
        try:
            warmers = get_warmers()
        except WarmerError as exc:
            raise CommandError(str(exc), returncode=2) from exc
        if not warmers:
            raise CommandError(
                "--queries: no warmer to run. Decorate functions with @django_tiercache.warmer "
                "in a warmers module of an installed app, or list their dotted paths in "
                "TIERCACHE['WARMERS'].",
                returncode=2,
            )
        before = stats.snapshot()
        failures: list[Outcome] = []
        for name, func in warmers.items():
            started = time.monotonic()
            try:
                func()
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                failures.append(Outcome(f"warmer {name}", ok=False, error=error))
                self.stdout.write(self.style.ERROR(f"warmer {name}: FAILED: {error}"))
                if self.verbosity > 1:
                    self.stderr.write(traceback.format_exc())
                continue
            if self.verbosity:
                self.stdout.write(f"warmer {name}: ok {time.monotonic() - started:.2f}s")
        after = stats.snapshot()
        computed = after["query_misses"] - before["query_misses"]
        cached = (
            after["query_hits"]
            - before["query_hits"]
            + after["query_stale"]
            - before["query_stale"]
        )
        errors = after["query_errors"] - before["query_errors"]
        line = (
            f"Queries: {len(warmers) - len(failures)} of {len(warmers)} warmer(s) ran; "
            f"{computed} cached query result(s) computed, {cached} already cached"
        )
        if errors:
            line += f", {errors} cache error(s)"
            failures.append(
                Outcome("query tier", ok=False, error=f"{errors} cache error(s): nothing stored")
            )
        summary.append(line)
        return failures

    # -- pages ----------------------------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        """One session per thread (sessions are not thread-safe)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["User-Agent"] = self.user_agent
            self._sessions.append(session)
        return session

    def fetch(self, url: str) -> tuple[Outcome, bytes | None]:
        """GET ``url`` (redirects not followed: the redirect itself is what gets cached)."""
        started = time.monotonic()
        try:
            response = self.session.get(url, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
            return Outcome(url, ok=False, error=error, seconds=time.monotonic() - started), None
        ok = response.status_code < 400
        outcome = Outcome(
            url,
            ok=ok,
            status=response.status_code,
            cache=cache_status(response.headers),
            seconds=time.monotonic() - started,
        )
        return outcome, response.content if ok else None

    def warm_pages(self, urls: list[str], concurrency: int) -> list[Outcome]:
        if not urls:
            return []
        outcomes: list[Outcome] = []
        progress = None
        if self.stdout.isatty() and self.verbosity:
            progress = self.progress(len(urls))
            next(progress)
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(self.fetch, url) for url in urls]
            for future in as_completed(futures):
                outcome = future.result()[0]
                outcomes.append(outcome)
                if progress is not None:
                    progress.send(outcome)
                elif self.verbosity:
                    self.stdout.write(outcome.describe())
        if progress is not None:
            progress.close()
        return outcomes

    def progress(self, total: int) -> Generator[None, Outcome, None]:
        """A generator drawing ``[####....] done/total`` on one terminal line."""
        self.stdout.write(f"[{'.' * PROGRESS_WIDTH}] 0/{total}", ending="")
        done = failed = 0
        try:
            while True:
                outcome: Outcome = yield
                done += 1
                failed += not outcome.ok
                filled = PROGRESS_WIDTH * done // total
                bar = "#" * filled + "." * (PROGRESS_WIDTH - filled)
                tail = f", {failed} failed" if failed else ""
                self.stdout.write(f"\r[{bar}] {done}/{total}{tail}", ending="")
                self.stdout.flush()
        finally:
            self.stdout.write("")
