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

On Redis Cluster (:class:`NodeRunGuard`) every master is such a server: each keeps the record of
its own run in one of its slots, and a master restarted from a snapshot, or a replica promoted in
its place, has the tier's keys dropped *on that master* before its first command, the others
untouched. Dropping them there is enough: an entry elsewhere that recorded one of its tokens no
longer matches a token that is missing (or created afresh, at random).
"""

from __future__ import annotations

import binascii
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
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
            _announce(recorded)
            _drop(connection, self.pattern)
            _call(connection, "SET", run_key, run_id)
        stats.incr("query_restarts")
        return True

    def _run_id(self, connection: Any) -> bytes | None:
        try:
            return _parse_run_id(_call(connection, "INFO", "server"))
        except ResponseError as exc:  # not permitted (ACL), or not a real Redis
            self._blind = True
            logger.warning("tiercache: cannot see Redis restarts (INFO refused: %s)", exc)
            return None


class NodeRunGuard:
    """The check of every master of a ``RedisCluster`` client (``RedisClusterCache`` passes
    :meth:`on_connect` as its ``redis_connect_func``), inert until :meth:`watch`.

    A master's record is ``{<tag>}<run key>``, the tag chosen so that the name falls in one of
    the slots the master itself says it owns (``CLUSTER NODES``); a replica owns none and is not
    checked (the tier never reads from one: E012). The check is then one round trip,
    ``INFO server`` and ``GET`` of the record together.
    """

    def __init__(self, chained: Callable[[Any], None] | None) -> None:
        self._chained = chained  # a redis_connect_func of the cache's OPTIONS
        self._lock = threading.Lock()
        self.run_key: str | None = None
        self.patterns: tuple[str, ...] = ()
        self._records: dict[tuple[str, int], str | None] = {}  # address -> its record
        self._blind = False

    def watch(self, run_key: str, patterns: Sequence[str]) -> None:
        """Check each master's record of ``run_key``; on a new run drop its keys matching any
        of ``patterns`` (its record among them)."""
        self.run_key, self.patterns = run_key, tuple(patterns)

    def on_connect(self, connection: Any) -> None:
        """RedisCluster's connect hook (it has made the usual handshake): :meth:`check`."""
        if self._chained is not None:
            self._chained(connection)
        self.check(connection)

    def check(self, connection: Any) -> bool:
        """As :meth:`RunGuard.check`, for the master at the other end of ``connection``."""
        if self.run_key is None or self._blind:
            return False
        found = self._read(connection)
        if found is None:
            return False
        record, run_id, recorded = found
        if recorded == run_id:
            return False
        with self._lock:
            recorded = _call(connection, "GET", record)
            if recorded == run_id:
                return False
            _announce(recorded)
            for pattern in self.patterns:
                _drop_each(connection, pattern)
            _call(connection, "SET", record, run_id)
        stats.incr("query_restarts")
        return True

    def _read(self, connection: Any) -> tuple[str, bytes, bytes | None] | None:
        """The master's record, its ``run_id`` and the one recorded; None when there is nothing
        to check (a replica, INFO refused)."""
        address = (connection.host, connection.port)
        record = self._records.get(address)
        if record is not None:
            info, recorded = _replies(connection, ("INFO", "server"), ("GET", record))
            if not isinstance(recorded, ResponseError):
                run_id = self._run_id(info)
                return None if run_id is None else (record, run_id, recorded)
        # The first check of this master, or its slots have moved (MOVED): look again.
        record = self._records[address] = self._record(connection)
        if record is None:
            return None
        info, recorded = _replies(connection, ("INFO", "server"), ("GET", record))
        if isinstance(recorded, ResponseError):
            raise recorded
        run_id = self._run_id(info)
        return None if run_id is None else (record, run_id, recorded)

    def _run_id(self, info: Any) -> bytes | None:
        if isinstance(info, ResponseError):
            self._refused(info)
            return None
        return _parse_run_id(info)

    def _refused(self, exc: ResponseError) -> None:
        """Not permitted (ACL), or not a real Redis: restarts cannot be seen (warned once)."""
        self._blind = True
        logger.warning("tiercache: cannot see Redis restarts (INFO or CLUSTER NODES: %s)", exc)

    def _record(self, connection: Any) -> str | None:
        """The name of the master's record: ``{r<n>}<run key>`` for the first ``n`` that hashes
        to a slot the master owns and is not migrating (None: it owns none)."""
        try:
            slots = _own_slots(_call(connection, "CLUSTER", "NODES"))
        except ResponseError as exc:
            self._refused(exc)
            return None
        if not slots:
            return None
        # Redis Cluster's key slot: CRC16 (XMODEM) of the hash tag, modulo 16384.
        n = next(n for n in itertools.count() if binascii.crc_hqx(b"r%d" % n, 0) % 16384 in slots)
        return f"{{r{n}}}{self.run_key}"


def _own_slots(nodes: Any) -> set[int]:
    """The slots that the node answering ``CLUSTER NODES`` (its ``myself`` line) owns and is
    not migrating away."""
    for line in _text(nodes).splitlines():
        fields = line.split()
        if len(fields) > 2 and "myself" in fields[2].split(","):
            slots: set[int] = set()
            moving: set[int] = set()  # [slot->-node] migrating, [slot-<-node] importing
            for field in fields[8:]:
                if field[0] == "[":
                    moving.add(int(field[1:].partition("-")[0]))
                else:
                    first, _, last = field.partition("-")
                    slots.update(range(int(first), int(last or first) + 1))
            return slots - moving
    return set()


def _announce(recorded: bytes | None) -> None:
    # None: a new server, or data from before the tier recorded runs: no warning.
    (logger.info if recorded is None else logger.warning)(
        "tiercache: Redis has a new run_id (restarted, restored or failed over): its "
        "data may predate invalidations it lost; dropping the query tier's keys"
    )


def _text(reply: Any) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def _parse_run_id(info: Any) -> bytes | None:
    """The ``run_id`` in the reply of ``INFO server``."""
    for line in _text(info).splitlines():
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


def _replies(connection: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """``commands`` sent together on ``connection``: each reply, or its error."""
    connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for _command in commands:
        try:
            replies.append(connection.read_response())
        except ResponseError as exc:
            replies.append(exc)
    return replies


def _drop_each(connection: Any, pattern: str) -> None:
    """As :func:`_drop`, one ``UNLINK`` per key (a cluster node refuses keys of several slots
    in one command), a batch of them sent together."""
    cursor = b"0"
    while True:
        cursor, keys = _call(connection, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        for reply in _replies(connection, *(("UNLINK", key) for key in keys)) if keys else ():
            if isinstance(reply, ResponseError):
                raise reply
        if int(cursor) == 0:
            return
