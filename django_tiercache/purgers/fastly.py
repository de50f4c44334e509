"""Public path of :mod:`django_tiercache.edge.purgers.fastly`."""

from django_tiercache.edge.purgers.fastly import FastlyPurger

__all__ = ["FastlyPurger"]
