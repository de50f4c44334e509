"""Under a real ASGI server (uvicorn), Redis connections stay bounded by the pool."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.redis_server import free_port, private_redis, wait_until

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 1000
POOL = 10


def test_a_thousand_asgi_requests_use_the_pool_s_connections_only() -> None:
    pytest.importorskip("uvicorn", reason="uvicorn is a dev extra: pip install -e '.[dev]'")
    with private_redis() as redis_server:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "TIERCACHE_ASGI_REDIS_URL": redis_server.url,
            "TIERCACHE_ASGI_POOL": str(POOL),
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        command = [sys.executable, "-m", "uvicorn", "tests.asgi_site:application"]
        server = subprocess.Popen(
            [*command, "--port", str(port), "--log-level", "warning"], env=env, cwd=ROOT
        )
        try:
            url = f"http://127.0.0.1:{port}/item/"
            wait_until(lambda: requests.get(f"{url}0", timeout=2).ok, what="uvicorn")
            redis = redis_server.client()
            before = redis.info("stats")["total_connections_received"]

            def get(number: int) -> tuple[int, int]:
                reply = requests.get(f"{url}{number}", timeout=10)
                reply.raise_for_status()
                return int(reply.json()["value"]), int(reply.json()["hits"])

            with ThreadPoolExecutor(max_workers=16) as pool:
                replies = list(pool.map(get, range(REQUESTS)))
            opened = redis.info("stats")["total_connections_received"] - before
        finally:
            server.terminate()
            server.wait(timeout=10)
    assert opened <= POOL, f"{opened} Redis connections opened for {REQUESTS} requests"
    assert [value for value, _ in replies] == [n % 50 for n in range(REQUESTS)]
    assert max(hits for _, hits in replies) >= REQUESTS - 100  # served from Redis
