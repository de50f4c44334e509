"""Public path of :mod:`django_tiercache.edge.purgers.base`."""

from django_tiercache.edge.purgers.base import BasePurger, PurgerConfigError, PurgeResult

__all__ = ["BasePurger", "PurgeResult", "PurgerConfigError"]
