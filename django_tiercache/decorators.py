"""The public path of the HTTP tier's view decorators (:mod:`django_tiercache.http.decorators`)."""

from django_tiercache.http.decorators import no_cache, origin_cache, private_cache

__all__ = ["no_cache", "origin_cache", "private_cache"]
