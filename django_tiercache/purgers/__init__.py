"""The public paths of the edge purgers (``BACKEND`` dotted paths in ``TIERCACHE["PURGERS"]``).

The implementations live in :mod:`django_tiercache.edge.purgers`.
"""

from django_tiercache.edge.purgers import (
    BasePurger,
    PurgerConfigError,
    PurgeResult,
    build_purger,
    get_purgers,
)

__all__ = ["BasePurger", "PurgeResult", "PurgerConfigError", "build_purger", "get_purgers"]
