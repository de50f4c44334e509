"""Never stale behind a lagging read replica: a real primary and streaming replica (300 ms apply
delay, tests/pg_cluster.py) behind a router, save -> immediate cached read cycles counted by
tests/replica_scenario.py in processes of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.pg_cluster import Cluster, pg_cluster  # noqa: F401  (the fixture)
from tests.redis_server import private_redis

CYCLES = 200


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """The suite's Redis when it names one (every process of a test must share it), else a
    private redis-server."""
    configured = os.environ.get("TIERCACHE_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    with private_redis() as server:
        yield server.url


def scenario(cluster: Cluster, redis_url: str, *args: str, safety: bool = True) -> dict[str, Any]:
    env = {
        **os.environ,
        **cluster.env(),
        "DJANGO_SETTINGS_MODULE": "tests.settings_replica",
        "TIERCACHE_TEST_REDIS_URL": redis_url,
        "TIERCACHE_TEST_KEY_PREFIX": f"tc-replica-{uuid.uuid4().hex[:8]}",
        "TIERCACHE_TEST_REPLICA_SAFETY": "on" if safety else "off",
    }
    command = [sys.executable, "-m", "tests.replica_scenario", "run", f"--cycles={CYCLES}", *args]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(outcome))  # shown with -s: the counts the report quotes
    return outcome


@pytest.mark.parametrize(
    ("reader", "read"), [("same", "router"), ("other", "router"), ("same", "using")]
)
def test_no_stale_read_after_a_save(
    pg_cluster: Cluster,  # noqa: F811
    redis_url: str,
    reader: str,
    read: str,
) -> None:
    outcome = scenario(pg_cluster, redis_url, f"--reader={reader}", f"--read={read}")
    assert outcome["cycles"] == CYCLES
    assert (outcome["stale_get"], outcome["stale_list"], outcome["poisoned"]) == (0, 0, 0)


def test_without_the_safety_reads_are_stale(pg_cluster: Cluster, redis_url: str) -> None:  # noqa: F811
    """The same cycles with ``READ_REPLICAS = []``: the replica's old rows are served, and stored
    under the new versions, so they stay stale after the replica has caught up."""
    outcome = scenario(pg_cluster, redis_url, safety=False)
    assert outcome["stale_get"] > CYCLES // 2
    assert outcome["stale_list"] > CYCLES // 2
    assert outcome["poisoned"] > CYCLES // 2
