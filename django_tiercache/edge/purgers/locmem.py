"""A purger that records what it was asked to purge, for tests (like Django's locmem email)."""

from __future__ import annotations

from dataclasses import dataclass

from django_tiercache.edge.purgers.base import BasePurger, PurgeResult


@dataclass(frozen=True)
class PurgeCall:
    purger: str
    keys: tuple[str, ...]
    soft: bool
    purge_all: bool = False


#: Every call made to a locmem purger in this process, oldest first. Clear it with ``reset()``.
calls: list[PurgeCall] = []


def reset() -> None:
    calls.clear()


def purged_keys(purger: str | None = None) -> set[str]:
    """Every key purged so far (by the purger named ``purger``, or by any)."""
    return {key for c in calls if purger in (None, c.purger) for key in c.keys}


class LocMemPurger(BasePurger):
    """Records calls in :data:`calls`. Option ``MAX_KEYS_PER_REQUEST`` (default 256)."""

    @property
    def max_keys_per_request(self) -> int:
        return int(self.options.get("MAX_KEYS_PER_REQUEST", self.default_max_keys_per_request))

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        calls.append(PurgeCall(self.name, tuple(keys), soft))
        return PurgeResult(ok=True, keys=tuple(keys))

    def purge_all(self) -> PurgeResult:
        calls.append(PurgeCall(self.name, (), soft=False, purge_all=True))
        return PurgeResult(ok=True)
