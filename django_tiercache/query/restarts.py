"""A Redis that restarted with old data: caught on every (re)connection, before it serves a hit.

Redis restarted from its last snapshot (RDB or AOF), or a replica promoted by a failover, holds
entries and version tokens as they were some time ago: invalidations it acknowledged after that
are lost, and an entry they had made a miss matches its tokens again. Nothing in the data shows
it, and no journal can say which invalidations to replay (the lost ones *succeeded*). The server
does show it: every start has a new ``run_id`` (``INFO server``).

So the query tier keeps, in the cache itself, the ``run_id`` of the server whose data it last
made safe (``<KEY_PREFIX>:run``). Each connection of the pool compares the two when it connects or
reconnects (redis-py's ``redis_connect_func``), before it carries any command. When they differ
the data may predate lost invalidations, so every key of the tier is dropped (``SCAN`` +
``UNLINK``) and only then the new ``run_id`` is recorded: in every process, the first connection
to a restarted server finds the tier empty. A restart without persistence comes back empty, and
the same step costs two commands.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from django_tiercache import stats

logger = logging.getLogger(__name__)


class RunGuard:
    """The check of one connection pool: ``install`` it, then :meth:`watch` a tier's keys."""

    def __init__(self, chained: Callable[[Any], None] | None) -> None:
        self._chained = chained  # a redis_connect_func configured before ours
        self._lock = threading.Lock()
        self.run_key: str | None = None
        self.pattern = ""
        self._blind = False  # INFO refused: restarts cannot be seen (warned once)

    @classmethod
    def install(cls, pool: Any) -> RunGuard:
        """The guard of ``pool``, installed for every connection the pool opens from now on."""
        current = pool.connection_kwargs.get("redis_connect_func")
        guard = getattr(current, "__self__", None)
        if not isinstance(guard, cls):
            guard = cls(current)
            pool.update_connection_kwargs(redis_connect_func=guard.on_connect)
        return guard

    def watch(self, run_key: str, pattern: str) -> None:
        """Check ``run_key``; on a new run drop every key matching ``pattern`` (its own too)."""
        self.run_key, self.pattern = run_key, pattern

    def on_connect(self, connection: Any) -> None:
        """redis-py's connect hook: the usual handshake, then :meth:`check`."""
        if self._chained is not None:
            self._chained(connection)
        else:
            connection.on_connect()
        self.check(connection)

    def check(self, connection: Any) -> bool:
        """Make the data safe if it comes from another run than the one recorded; whether it did.

        Raises a Redis error when it could not (the connection then fails, and the tier reads
        from the database until a later connection succeeds).
        """
        run_key = self.run_key
        run_id = None if run_key is None or self._blind else self._run_id(connection)
        if run_key is None or run_id is None or _call(connection, "GET", run_key) == run_id:
            return False
        with self._lock:  # one connection of this process drops the keys; the others wait
            recorded = _call(connection, "GET", run_key)
            if recorded == run_id:
                return False
            # None: a new server, or data from before the tier recorded runs: no warning.
            (logger.info if recorded is None else logger.warning)(
                "tiercache: Redis has a new run_id (restarted, restored or failed over): its "
                "data may predate invalidations it lost; dropping the query tier's keys"
            )
            _drop(connection, self.pattern)
            _call(connection, "SET", run_key, run_id)
        stats.incr("query_restarts")
        return True

    def _run_id(self, connection: Any) -> bytes | None:
        try:
            info = _call(connection, "INFO", "server")
        except ResponseError as exc:  # not permitted (ACL), or not a real Redis
            self._blind = True
            logger.warning("tiercache: cannot see Redis restarts (INFO refused: %s)", exc)
            return None
        text = info.decode() if isinstance(info, bytes) else str(info)
        for line in text.splitlines():
            if line.startswith("run_id:"):
                return line.partition(":")[2].strip().encode()
        return None


def _call(connection: Any, *args: Any) -> Any:
    """One command on ``connection`` (inside the connect hook the pool's client cannot be used)."""
    connection.send_command(*args)
    return connection.read_response()


def _drop(connection: Any, pattern: str) -> None:
    """Delete every key matching ``pattern``: every key present from start to end is seen."""
    cursor = b"0"
    while True:
        cursor, keys = _call(connection, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        if keys:
            _call(connection, "UNLINK", *keys)
        if int(cursor) == 0:
            return
