"""The HTTP tier: cache policy decorators, header helpers and the middleware that writes them.

Users import :mod:`django_tiercache.decorators` and :mod:`django_tiercache.middleware`.
"""
