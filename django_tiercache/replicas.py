"""Read replicas: how far the primary has written and how far a replica has applied.

A database router may send reads to a replica that lags behind the primary. Both tiers ask here
whether a replica has applied a change before they trust it: the query tier before it computes
a missed entry from the replica (else it reads the write database), the edge tier before it
purges (else the CDN could refill from the replica). On PostgreSQL the positions are WAL LSNs:
the primary's ``pg_current_wal_insert_lsn()`` after a commit, a replica's
``pg_last_wal_replay_lsn()``. Other databases have no position this module can compare: their
replicas are never trusted with a recent change (see :func:`may_lag` and docs/query.rst).

Which aliases are replicas: ``TIERCACHE["READ_REPLICAS"]``; ``None`` (the default) counts the
aliases whose settings describe a replica of the write alias (see :func:`looks_like_replica`),
``[]`` turns the safety off.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import Any

from django.conf import settings
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from django_tiercache.conf import tiercache_settings

logger = logging.getLogger(__name__)

#: Position of a server that is not in recovery: it sees every commit made on it.
PRIMARY = 1 << 64


def configured() -> list[str] | None:
    """``READ_REPLICAS``: the replica aliases, or None for "those that look like replicas"."""
    value = tiercache_settings.READ_REPLICAS
    return None if value is None else list(value)


def looks_like_replica(read_alias: str, write_alias: str) -> bool:
    """Whether the settings of ``read_alias`` describe a replica of ``write_alias``: its
    ``TEST["MIRROR"]`` is the write alias, or it has the same engine and database name on
    another server (``HOST``/``PORT``). Another database name, or the same server, is not one:
    two aliases of independent databases (or of one) never lag behind each other."""
    databases: dict[str, dict[str, Any]] = settings.DATABASES
    read, write = databases.get(read_alias), databases.get(write_alias)
    if read is None or write is None:
        return True  # not described: assume the worst
    if (read.get("TEST") or {}).get("MIRROR") == write_alias:
        return True

    def same(name: str) -> bool:
        return bool(read.get(name) == write.get(name))

    return same("ENGINE") and same("NAME") and not (same("HOST") and same("PORT"))


def may_lag(read_alias: str, write_alias: str) -> bool:
    """Whether reads through ``read_alias`` may miss commits made through ``write_alias``."""
    if read_alias == write_alias:
        return False
    replicas = configured()
    if replicas is None:
        return looks_like_replica(read_alias, write_alias)
    return read_alias in replicas


def replicas_of(write_alias: str) -> list[str]:
    """The aliases that may lag behind ``write_alias``."""
    replicas = configured()
    aliases = replicas if replicas is not None else list(settings.DATABASES)
    return [alias for alias in aliases if may_lag(alias, write_alias)]


def comparable(read_alias: str, write_alias: str) -> bool:
    """Whether the positions of these two aliases can be compared (both PostgreSQL)."""
    return connections[read_alias].vendor == connections[write_alias].vendor == "postgresql"


def primary_position(write_alias: str) -> int | None:
    """Where ``write_alias`` has written up to now (after a commit: past it), or None when no
    replica can read behind it or its database has no comparable position (not PostgreSQL)."""
    connection = connections[write_alias]
    if connection.vendor != "postgresql" or not replicas_of(write_alias):
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()")
        (lsn,) = cursor.fetchone()
    return parse_lsn(lsn)


# connection -> (the DB-API connection it had, the position its server had applied). Applied
# positions only grow, so a server known to be past a position needs no new question.
_applied: weakref.WeakKeyDictionary[BaseDatabaseWrapper, tuple[Any, int]] = (
    weakref.WeakKeyDictionary()
)


def has_applied(alias: str, position: int) -> bool:
    """Whether the PostgreSQL server behind ``alias`` has applied WAL up to ``position``: asked
    (one query) only when this connection has not already shown it to be that far."""
    if position <= 0:
        return True
    connection = connections[alias]
    known = _applied.get(connection)
    if known is not None and known[0] is connection.connection and known[1] >= position:
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()")
        in_recovery, lsn = cursor.fetchone()
    applied = parse_lsn(lsn) if in_recovery and lsn is not None else PRIMARY
    _applied[connection] = (connection.connection, applied)
    return applied >= position


def wait_until_applied(write_alias: str, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until every replica of ``write_alias`` has applied what it has
    committed so far; True if they all have. A replica whose position cannot be compared (not
    PostgreSQL) is waited for only when ``READ_REPLICAS`` names it: then the whole ``timeout``.
    """
    replicas = replicas_of(write_alias)
    if not replicas:
        return True
    explicit = configured() is not None
    unknown = [a for a in replicas if explicit and not comparable(a, write_alias)]
    position = primary_position(write_alias) or 0
    waiting = [a for a in replicas if comparable(a, write_alias)]
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        waiting = [alias for alias in waiting if not has_applied(alias, position)]
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)
    if unknown and deadline > time.monotonic():
        time.sleep(deadline - time.monotonic())
    if waiting:
        logger.warning(
            "tiercache: replica(s) %s had not applied the change after %.1f s; purging anyway",
            ", ".join(waiting),
            timeout,
        )
    return not waiting and not unknown


def parse_lsn(lsn: str) -> int:
    """A PostgreSQL LSN (``"16/B374D848"``) as an integer."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)
