"""Public path of :mod:`django_tiercache.edge.purgers.locmem` (a purger that records calls)."""

from django_tiercache.edge.purgers.locmem import LocMemPurger, PurgeCall, calls, purged_keys, reset

__all__ = ["LocMemPurger", "PurgeCall", "calls", "purged_keys", "reset"]
