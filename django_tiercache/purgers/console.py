"""Public path of :mod:`django_tiercache.edge.purgers.console`."""

from django_tiercache.edge.purgers.console import ConsolePurger

__all__ = ["ConsolePurger"]
