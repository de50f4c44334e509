"""The demo's query-tier cache: one in-memory Redis that every process of ``make demo`` shares.

``make demo`` (``example_project/demo.py``) serves fakeredis over TCP on a free port of 127.0.0.1
and writes its URL to ``example_project/.demo-cache``. ``settings.py`` reads that file, so the
development server, its autoreloaded child and a ``manage.py shell`` opened in another terminal all
use the same cache: an edit saved in the shell invalidates what the running shop serves.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

#: Where ``make demo`` writes the URL of its cache; ``SHOP_DEMO_CACHE_FILE`` overrides it.
STATE_FILE = Path(
    os.environ.get("SHOP_DEMO_CACHE_FILE") or Path(__file__).resolve().parent.parent / ".demo-cache"
)


def running_url(path: Path = STATE_FILE) -> str:
    """The URL of the demo's cache if ``make demo`` is running (it answers), else ``""``."""
    try:
        url = path.read_text().strip()
    except OSError:
        return ""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname or not parts.port:
        return ""
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=0.3):
            return url
    except OSError:  # a file left behind by a demo that was killed
        return ""


@contextmanager
def serve(path: Path = STATE_FILE) -> Iterator[str]:
    """Serve an in-memory Redis on a free port while the block runs; yield its URL."""
    from fakeredis import TcpFakeServer

    server = TcpFakeServer(("127.0.0.1", 0))
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="demo-cache", daemon=True)
    thread.start()
    url = f"redis://127.0.0.1:{port}/0"
    path.write_text(f"{url}\n")
    try:
        yield url
    finally:
        if running_url(path) == url:
            path.unlink(missing_ok=True)
        server.shutdown()
        server.server_close()
