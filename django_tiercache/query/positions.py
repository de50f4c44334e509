"""Per key, the WAL position of its latest invalidation on the primary (see ``replicas``).

A version token says *that* a key changed; its position says *where* in the primary's WAL the
change is, so a miss computed from a replica can first check that the replica has applied it.
Positions are written before the tokens they go with and only ever grow (an invalidation that
arrives late never lowers a key's position); they live as long as the tokens. With django-redis
the write is one small Lua script (``register_script``) and the read one ``MGET``; any other
Django cache gets the same through ``get_many``/``set_many`` (the growth then not atomic).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.cache import BaseCache

# KEYS: position keys; ARGV: the position (16 hex digits: string order is number order), ttl.
_RECORD = """
for _, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current and current >= ARGV[1] then
    redis.call('EXPIRE', key, ARGV[2])
  else
    redis.call('SET', key, ARGV[1], 'EX', ARGV[2])
  end
end
"""


def _hex(position: int) -> str:
    return f"{position:016x}"


def _client(cache: BaseCache) -> Any:
    """The django-redis client of ``cache`` (a redis-py ``Redis``), or None for other caches."""
    client = getattr(cache, "client", None)
    if client is None or not hasattr(client, "get_client"):
        return None
    return client.get_client(write=True)


def record(cache: BaseCache, keys: Sequence[str], position: int, ttl: int) -> None:
    """Raise the position of each of ``keys`` to ``position`` (never lower it)."""
    redis = _client(cache)
    if redis is not None:
        redis.register_script(_RECORD)(
            keys=[cache.make_key(key) for key in keys], args=[_hex(position), ttl]
        )
        return
    found = cache.get_many(keys)
    cache.set_many({k: max(position, found.get(k) or 0) for k in keys}, ttl)


def required(cache: BaseCache, keys: Sequence[str]) -> int:
    """The highest position among ``keys`` (0 when none has one)."""
    if not keys:
        return 0
    redis = _client(cache)
    if redis is not None:
        values = redis.mget([cache.make_key(key) for key in keys])
        return max((int(v, 16) for v in values if v is not None), default=0)
    return max((int(v) for v in cache.get_many(keys).values()), default=0)
