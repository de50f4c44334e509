"""Public path of :mod:`django_tiercache.edge.purgers.varnish`."""

from django_tiercache.edge.purgers.varnish import VarnishPurger

__all__ = ["VarnishPurger"]
