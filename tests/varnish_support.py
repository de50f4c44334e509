"""A real Varnish for the tests: find ``varnishd`` and the xkey vmod, run docs/varnish.vcl.

``start_varnish(backend_port)`` runs ``varnishd`` in the foreground on a free port with its own
work directory, waits until it answers and stops it afterwards. The ``varnish_bin`` fixture skips
with a visible reason when ``varnishd`` or ``libvmod_xkey.so`` is absent (install them with
``apt-get install varnish varnish-modules``; ``.ci/run`` does). ``Origin`` is a tiny HTTP server
whose answers a test sets per path.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
VCL = REPO / "docs" / "varnish.vcl"
#: The secret the tests' Varnish expects (replaces the VCL's placeholder).
TOKEN = "test-purge-token-5f2a"
_VMOD_DIRS = (
    "/usr/lib/*/varnish/vmods",
    "/usr/lib/varnish/vmods",
    "/usr/lib64/varnish/vmods",
    "/usr/local/lib/varnish/vmods",
    "/usr/local/lib/*/varnish/vmods",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_varnishd() -> str | None:
    """``TIERCACHE_TEST_VARNISHD`` if set (a missing file means no Varnish), else the PATH."""
    configured = os.environ.get("TIERCACHE_TEST_VARNISHD")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("varnishd") or next(
        (p for p in ("/usr/sbin/varnishd", "/usr/local/sbin/varnishd") if os.access(p, os.X_OK)),
        None,
    )


def find_xkey_vmod_dir() -> str | None:
    """The directory holding ``libvmod_xkey.so`` (``TIERCACHE_TEST_VMOD_DIR`` first)."""
    patterns = [os.environ.get("TIERCACHE_TEST_VMOD_DIR", ""), *_VMOD_DIRS]
    for pattern in filter(None, patterns):
        for directory in sorted(glob.glob(pattern)):
            if os.path.exists(os.path.join(directory, "libvmod_xkey.so")):
                return directory
    return None


@dataclass(frozen=True)
class VarnishBinary:
    varnishd: str
    vmod_dir: str


@pytest.fixture(scope="session")
def varnish_bin() -> VarnishBinary:
    """``varnishd`` and the xkey vmod, or a skip that says what is missing."""
    varnishd = find_varnishd()
    if varnishd is None:
        pytest.skip("varnishd not found: apt-get install varnish varnish-modules")
    vmod_dir = find_xkey_vmod_dir()
    if vmod_dir is None:
        pytest.skip("libvmod_xkey.so not found: apt-get install varnish-modules")
    return VarnishBinary(varnishd, vmod_dir)


def vcl_for(backend_port: int, backend_host: str = "127.0.0.1") -> str:
    """docs/varnish.vcl with its backend and purge token filled in for the tests."""
    text = VCL.read_text()
    replacements = {
        '.host = "127.0.0.1";': f'.host = "{backend_host}";',
        '.port = "8000";': f'.port = "{backend_port}";',
        '"CHANGE-ME-purge-token"': f'"{TOKEN}"',
    }
    for old, new in replacements.items():
        assert old in text, f"docs/varnish.vcl lost its {old!r} line"
        text = text.replace(old, new)
    return text


@dataclass
class Varnish:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(self.url + path.lstrip("/"), timeout=5, **kwargs)  # type: ignore[arg-type]


@contextmanager
def start_varnish(binary: VarnishBinary, backend_port: int) -> Iterator[Varnish]:
    """Run varnishd with docs/varnish.vcl in front of ``127.0.0.1:backend_port``."""
    with tempfile.TemporaryDirectory(prefix="tiercache-varnish-") as workdir:
        vcl = Path(workdir, "default.vcl")
        vcl.write_text(vcl_for(backend_port))
        log = Path(workdir, "varnishd.log")
        port = free_port()
        command = [
            binary.varnishd,
            "-F",  # foreground: the process we start is the one we stop
            "-j", "none",  # no privilege separation (the work directory is ours)
            "-n", str(Path(workdir, "n")),
            "-a", f"127.0.0.1:{port}",
            "-T", "none",
            "-f", str(vcl),
            "-s", "malloc,64m",
            "-p", f"vmod_path={binary.vmod_dir}",
            "-p", "ban_lurker_sleep=0.01",
        ]  # fmt: skip
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        varnish = Varnish(f"http://127.0.0.1:{port}/", process, log)
        try:
            _wait_until_up(varnish)
            yield varnish
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_up(varnish: Varnish, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if varnish.process.poll() is not None:
            raise RuntimeError(f"varnishd exited:\n{varnish.log.read_text()[-3000:]}")
        try:
            requests.get(varnish.url + "__tiercache_ping__", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(
        f"varnishd did not answer in {timeout} s:\n{varnish.log.read_text()[-3000:]}"
    )


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


class Origin:
    """A small threaded HTTP server: ``origin.routes[path] = Reply(...)``; counts requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Reply] = {}
        self.hits: dict[str, int] = {}
        self.requests: list[dict[str, str]] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                origin.hits[self.path] = origin.hits.get(self.path, 0) + 1
                origin.requests.append(dict(self.headers.items()))
                reply = origin.routes.get(self.path, Reply(404, body="not found"))
                body = reply.body.encode()
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Origin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as server:
        yield server


@pytest.fixture(scope="module")
def varnish(varnish_bin: VarnishBinary, origin: Origin) -> Iterator[Varnish]:
    """A Varnish running docs/varnish.vcl in front of :func:`origin`, for one test module."""
    with start_varnish(varnish_bin, origin.port) as instance:
        yield instance
