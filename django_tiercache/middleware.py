"""The public path of :class:`~django_tiercache.http.middleware.TierCacheMiddleware`."""

from django_tiercache.http.middleware import TierCacheMiddleware

__all__ = ["TierCacheMiddleware"]
