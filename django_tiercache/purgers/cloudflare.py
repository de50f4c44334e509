"""Public path of :mod:`django_tiercache.edge.purgers.cloudflare`."""

from django_tiercache.edge.purgers.cloudflare import CloudflarePurger

__all__ = ["CloudflarePurger"]
