"""``manage.py tiercache_warm`` against a live test server: pages, sitemaps, query warmers."""

from __future__ import annotations

import socket
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from pytest_django.live_server_helper import LiveServer

from django_tiercache.management.commands.tiercache_warm import USER_AGENT
from tests import warm_urls
from tests.testapp.models import Category, Product
from tests.varnish_support import free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.urls("tests.warm_urls")]


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def warm(*args: str, stdout: StringIO | None = None) -> str:
    out = stdout or StringIO()
    call_command("tiercache_warm", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def warm_error(*args: str) -> tuple[CommandError, str]:
    out = StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("tiercache_warm", *args, stdout=out, stderr=StringIO())
    return excinfo.value, out.getvalue()


@pytest.fixture(autouse=True)
def _forget_requests() -> None:
    warm_urls.user_agents.clear()


def products() -> None:
    """A warmer named in TIERCACHE["WARMERS"]."""
    list(Product.objects.filter(price__gte=0).cached())
    Product.objects.cached().count()


def broken() -> None:
    raise RuntimeError("the warmer broke")


def test_urls_are_fetched_with_the_cache_status_and_a_summary(live_server: LiveServer) -> None:
    hit, miss, plain = (f"{live_server.url}{p}" for p in warm_urls.PAGES)

    out = warm("--url", hit, miss, "--url", plain, "--url", hit)

    assert "200 HIT" in out
    assert hit in out
    assert "200 MISS" in out
    assert miss in out
    assert "200 - " in out
    assert plain in out
    assert "Pages: 3 warmed, 0 failed" in out
    assert "Cache status: HIT 1, MISS 1, unknown 1" in out
    assert "Elapsed: " in out
    assert warm_urls.user_agents == [USER_AGENT] * 3  # duplicates fetched once


def test_custom_user_agent_and_concurrency(live_server: LiveServer) -> None:
    urls = [f"{live_server.url}{p}" for p in warm_urls.PAGES]

    warm("--url", *urls, "--concurrency", "2", "--user-agent", "deploy-warmer/1.0")

    assert warm_urls.user_agents == ["deploy-warmer/1.0"] * 3


def test_sitemap_index_is_followed_and_failures_exit_1(live_server: LiveServer) -> None:
    error, out = warm_error("--sitemap", f"{live_server.url}/sitemap.xml")

    assert error.returncode == 1
    assert "1 failure(s)" in str(error)
    assert "entries (sitemapindex)" in out
    assert "Pages: 3 warmed, 1 failed" in out
    assert "500 - " in out
    assert f"{live_server.url}/page/broken/" in out
    assert "Failures (1):" in out
    assert "/img.png" not in out  # image entries of a sitemap are not pages
    assert len(warm_urls.user_agents) == 4


def test_unreachable_pages_bad_sitemaps_and_timeouts_are_failures(
    live_server: LiveServer,
) -> None:
    down = f"http://127.0.0.1:{free_port()}/"
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = f"http://127.0.0.1:{silent.getsockname()[1]}/"

        error, out = warm_error(
            "--url",
            down,
            mute,
            "--timeout",
            "0.2",
            "--sitemap",
            f"{live_server.url}/not-a-sitemap.xml",
            "--sitemap",
            f"{live_server.url}/page/broken/",
        )

    assert error.returncode == 1
    assert "4 failure(s)" in str(error)
    assert "ERR - " in out
    assert "ConnectionError" in out
    assert "ReadTimeout" in out
    assert "not-a-sitemap.xml" in out
    assert "500 - " in out


def test_urls_file(live_server: LiveServer, tmp_path: Path) -> None:
    urls_file = tmp_path / "urls.txt"
    urls_file.write_text(
        f"# pages to warm after a deploy\n\n{live_server.url}/page/hit/  # home\n"
        f"{live_server.url}/page/plain/\n"
    )

    out = warm("--urls-file", str(urls_file))

    assert "Pages: 2 warmed, 0 failed" in out


def test_progress_bar_on_a_terminal(live_server: LiveServer) -> None:
    terminal = Terminal()

    warm("--url", *(f"{live_server.url}{p}" for p in warm_urls.PAGES), stdout=terminal)

    out = terminal.getvalue()
    assert "\r[" in out
    assert "] 3/3" in out
    assert "200 HIT" not in out  # no per-page lines on a terminal
    assert "Pages: 3 warmed, 0 failed" in out


def test_query_warmers_fill_the_query_tier(settings: Any) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "WARMERS": [f"{__name__}.products"]}
    Category.objects.create(name="Shoes")

    out = warm("--queries")

    assert f"warmer {__name__}.products: ok" in out
    assert "warmer tests.testapp.warmers.categories: ok" in out  # found by autodiscovery
    assert "Pages:" not in out
    assert "Queries: 2 of 2 warmer(s) ran; 3 cached query result(s) computed, 0 already" in out

    out = warm("--queries")

    assert "0 cached query result(s) computed, 3 already cached" in out


def test_a_failing_warmer_exits_1(settings: Any) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "WARMERS": [f"{__name__}.broken"]}

    error, out = warm_error("--queries")

    assert error.returncode == 1
    assert f"warmer {__name__}.broken: FAILED: RuntimeError: the warmer broke" in out
    assert "Queries: 1 of 2 warmer(s) ran" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Nothing to warm"),
        (["--url", "/relative/"], "Not an absolute http(s) URL: '/relative/'"),
        (["--sitemap", "ftp://example.com/sitemap.xml"], "Not an absolute http(s) URL"),
        (["--urls-file", "/nonexistent/urls.txt"], "Cannot read --urls-file"),
    ],
)
def test_bad_command_lines_exit_2(args: list[str], message: str) -> None:
    error, _ = warm_error(*args)

    assert error.returncode == 2
    assert message in str(error)


def test_an_unimportable_warmer_exits_2(settings: Any) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "WARMERS": ["tests.nowhere.warm"]}

    error, _ = warm_error("--queries")

    assert error.returncode == 2
    assert "cannot import 'tests.nowhere.warm'" in str(error)


def test_queries_without_any_warmer_is_a_usage_error(monkeypatch: Any) -> None:
    from django_tiercache import warmers

    monkeypatch.setattr(warmers, "_registry", {})

    error, _ = warm_error("--queries")

    assert error.returncode == 2
    assert "no warmer to run" in str(error)
