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

from tests.pg_cluster import Cluster, find_bindir, start_cluster, unavailable
from tests.redis_server import free_port, private_redis
from tests.varnish_support import VarnishBinary, start_varnish, varnish_bin

__all__ = ["varnish_bin"]  # fixture

CYCLES = 200


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[Cluster]:
    """A primary and a replica 300 ms behind it, for one test module; skipped without binaries."""
    reason, bindir = unavailable(), find_bindir()
    if reason is not None or bindir is None:
        pytest.skip(reason or "no PostgreSQL server binaries")
    with start_cluster(bindir) as cluster:
        yield cluster


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


def scenario(
    cluster: Cluster,
    redis_url: str,
    *args: str,
    safety: bool = True,
    edge: bool = False,
    **extra_env: str,
) -> dict[str, Any]:
    env = {
        **extra_env,
        **os.environ,
        **cluster.env(),
        "DJANGO_SETTINGS_MODULE": "tests.settings_replica",
        "TIERCACHE_TEST_REDIS_URL": redis_url,
        "TIERCACHE_TEST_KEY_PREFIX": f"tc-replica-{uuid.uuid4().hex[:8]}",
        "TIERCACHE_TEST_REPLICA_SAFETY": "on" if safety else "off",
        "TIERCACHE_TEST_REPLICA_EDGE": "on" if edge else "off",
    }
    command = [sys.executable, "-m", "tests.replica_scenario", *args]
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
    pg_cluster: Cluster,
    redis_url: str,
    reader: str,
    read: str,
) -> None:
    outcome = scenario(
        pg_cluster, redis_url, "run", f"--cycles={CYCLES}", f"--reader={reader}", f"--read={read}"
    )
    assert outcome["cycles"] == CYCLES
    assert (outcome["stale_get"], outcome["stale_list"], outcome["poisoned"]) == (0, 0, 0)
    # A transaction's own writes never reach the cache, even when misses go to the primary.
    assert outcome["uncommitted_leaked"] == 0
    # Not every miss goes to the primary: once the replica has applied the saves, it serves them.
    assert outcome["primary_reads_after_catch_up"] == 0


def test_without_the_safety_reads_are_stale(pg_cluster: Cluster, redis_url: str) -> None:
    """The same cycles with ``READ_REPLICAS = []``: the replica's old rows are served, and stored
    under the new versions, so they stay stale after the replica has caught up."""
    outcome = scenario(pg_cluster, redis_url, "run", f"--cycles={CYCLES}", safety=False)
    assert outcome["stale_get"] > CYCLES // 2
    assert outcome["stale_list"] > CYCLES // 2
    assert outcome["poisoned"] > CYCLES // 2


@pytest.mark.parametrize("safety", [True, False])
def test_edge_purge_waits_for_the_replica(
    pg_cluster: Cluster,
    redis_url: str,
    safety: bool,
) -> None:
    """A purger that reads the replica when called sees each save only if the purge waited."""
    outcome = scenario(pg_cluster, redis_url, "edge", "--cycles=20", safety=safety, edge=True)
    if safety:
        assert outcome["early_purges"] == 0
    else:
        assert outcome["early_purges"] > 10


@pytest.mark.varnish
@pytest.mark.parametrize(("safety", "cycles"), [(True, CYCLES), (False, 20)])
def test_varnish_refills_fresh_pages_after_a_save(
    pg_cluster: Cluster,
    redis_url: str,
    varnish_bin: VarnishBinary,
    safety: bool,
    cycles: int,
) -> None:
    """Through docs/varnish.vcl in front of a live server whose page reads the replica: the
    page after each save is fresh when purges wait for the replica, stale when they do not."""
    origin_port = free_port()
    with start_varnish(varnish_bin, origin_port) as varnish:
        outcome = scenario(
            pg_cluster,
            redis_url,
            "varnish",
            f"--cycles={cycles}",
            safety=safety,
            TIERCACHE_TEST_ORIGIN_PORT=str(origin_port),
            TIERCACHE_TEST_VARNISH_URL=varnish.url,
        )
    assert outcome["cached_before_save"] == cycles  # each page was in Varnish before its save
    if safety:
        assert outcome["stale_pages"] == 0
    else:
        assert outcome["stale_pages"] > cycles // 2
