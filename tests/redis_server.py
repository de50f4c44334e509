"""Private Redis deployments on free ports, for outage and topology tests (never the machine's
shared Redis): one server, a primary with a replica, Sentinel (master, replica, sentinel) and a
Cluster of three masters. Each starts real ``redis-server`` processes in a temporary directory
and removes them when done; a test skips (with the reason) where ``redis-server`` is missing.
:func:`use_cache` points the query tier at one of them (the ``plain_redis`` fixture of
tests/conftest.py: one server).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

TIMEOUTS = {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5}


def django_redis(location: Any, **options: Any) -> dict[str, Any]:
    """A django-redis cache on ``location``, with socket timeouts and ``options``."""
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "OPTIONS": {**TIMEOUTS, **options},
    }


def use_cache(settings: Any, config: dict[str, Any], **tiercache: Any) -> None:
    """The query tier on the cache ``config`` (alias ``query``), with ``tiercache`` settings."""
    settings.CACHES = {**settings.CACHES, "query": config}
    settings.TIERCACHE = {**settings.TIERCACHE, "CACHE_ALIAS": "query", **tiercache}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


def wait_until(condition: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (OSError, redis.RedisError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what or condition}")


class RedisServer:
    """One ``redis-server`` (or sentinel) process on a free port; ``start`` again after ``stop``
    reuses the port (a restart: same address, new ``run_id``, no data unless ``dir`` kept some).
    """

    def __init__(self, *args: str, sentinel: bool = False, directory: Path | None = None) -> None:
        self.port = free_port()
        self.args = args
        self.sentinel = sentinel
        self._owned_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="tc-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, **kwargs)  # type: ignore[arg-type]

    def start(self) -> None:
        config = self.dir / f"redis-{self.port}.conf"
        if not config.exists():  # a sentinel rewrites its file: keep it across restarts
            config.write_text("")
        command = [_binary(), str(config)]
        if self.sentinel:
            command.append("--sentinel")
        command += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        if not self.sentinel:
            command += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        self.process = subprocess.Popen(
            [*command, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: self.client().ping(), what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        """Kill the server (SIGKILL): no shutdown, no save; the data on disk is its last
        snapshot (``SAVE``), if any, which ``start`` loads."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def pause(self, seconds: float) -> None:
        """Make the server unresponsive (not closed) for ``seconds``, as a stalled Redis is."""
        self.client().execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")

    def remove(self) -> None:
        self.stop()
        if self._owned_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def private_redis(*args: str) -> Iterator[RedisServer]:
    server = RedisServer(*args)
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _replicate(replica: RedisServer, primary: RedisServer) -> None:
    replica.client().execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
    wait_until(
        lambda: replica.client().info("replication")["master_link_status"] == "up",
        what="the replica's link to its primary",
    )


@contextmanager
def primary_with_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica of it (asynchronous replication, as Redis does it)."""
    with ExitStack() as stack:
        primary = stack.enter_context(private_redis())
        replica = stack.enter_context(private_redis())
        _replicate(replica, primary)
        yield primary, replica


class SentinelSet:
    """A master, a replica and one sentinel watching them as ``MASTER_NAME``."""

    MASTER_NAME = "tcmaster"

    def __init__(self, master: RedisServer, replica: RedisServer, sentinel: RedisServer) -> None:
        self.master, self.replica, self.sentinel = master, replica, sentinel

    @property
    def url(self) -> str:
        """django-redis' Sentinel ``LOCATION``."""
        return f"redis://{self.MASTER_NAME}/0"

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", self.sentinel.port)]

    def current_master(self) -> int:
        _host, port = self.sentinel.client().sentinel_get_master_addr_by_name(self.MASTER_NAME)
        return int(port)

    def failover(self) -> None:
        """Promote the replica (SENTINEL FAILOVER) and wait until both sides agree."""
        before = self.current_master()
        self.sentinel.client().execute_command("SENTINEL", "FAILOVER", self.MASTER_NAME)
        wait_until(lambda: self.current_master() != before, what="the sentinel failover")
        promoted = self.replica if self.current_master() == self.replica.port else self.master
        demoted = self.master if promoted is self.replica else self.replica
        wait_until(
            lambda: promoted.client().info("replication")["role"] == "master",
            what="the promoted replica",
        )
        wait_until(
            lambda: demoted.client().info("replication").get("master_link_status") == "up",
            what="the old master to replicate the new one",
        )
        self.master, self.replica = promoted, demoted


@contextmanager
def sentinel_set() -> Iterator[SentinelSet]:
    with ExitStack() as stack:
        master = stack.enter_context(private_redis())
        replica = stack.enter_context(private_redis())
        _replicate(replica, master)
        sentinel = RedisServer(sentinel=True)
        (sentinel.dir / f"redis-{sentinel.port}.conf").write_text(
            f"sentinel monitor {SentinelSet.MASTER_NAME} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {SentinelSet.MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {SentinelSet.MASTER_NAME} 5000\n"
        )
        stack.callback(sentinel.remove)
        sentinel.start()
        found = SentinelSet(master, replica, sentinel)
        wait_until(
            lambda: len(sentinel.client().sentinel_slaves(SentinelSet.MASTER_NAME)) == 1,
            what="the sentinel to discover the replica",
        )
        yield found


def cluster_ok(nodes: list[RedisServer]) -> bool:
    """Whether every node sees the cluster as serving all its slots."""
    return all(node.client().cluster("info")["cluster_state"] == "ok" for node in nodes)


@contextmanager
def cluster(masters: int = 3, replicas: int = 0) -> Iterator[list[RedisServer]]:
    """A Redis Cluster of ``masters`` masters, slots spread evenly, then ``replicas`` replicas of
    each (node ``masters + i`` replicates master ``i % masters``). A node stopped and started
    again keeps its identity and slots (its ``nodes.conf`` stays in its directory) but not its
    data."""
    with ExitStack() as stack:
        # The bus port is not port + 10000, which may exceed 65535.
        buses = [free_port() for _ in range(masters * (1 + replicas))]
        nodes = [
            stack.enter_context(
                private_redis(
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
                    *("--cluster-port", str(bus)),
                )
            )
            for bus in buses
        ]
        per_node = 16384 // masters
        for index, node in enumerate(nodes[:masters]):
            first = index * per_node
            last = 16383 if index == masters - 1 else first + per_node - 1
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
        for node, bus in zip(nodes[1:], buses[1:], strict=True):
            nodes[0].client().execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        for index, replica in enumerate(nodes[masters:]):
            master_id = nodes[index % masters].client().execute_command("CLUSTER", "MYID")
            wait_until(
                lambda r=replica, m=master_id: m in r.client().execute_command("CLUSTER", "NODES"),
                what="the replica to know its master",
            )
            replica.client().execute_command("CLUSTER", "REPLICATE", master_id)
        for replica in nodes[masters:]:
            wait_until(
                lambda r=replica: r.client().info("replication")["master_link_status"] == "up",
                what="the replica's link to its master",
            )
        wait_until(lambda: cluster_ok(nodes), what="the cluster to form")
        yield nodes
