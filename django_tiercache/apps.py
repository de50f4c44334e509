from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TierCacheConfig(AppConfig):
    name = "django_tiercache"
    verbose_name = _("Tier cache")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Compose the app: each tier registers with the core orchestrator, receivers connect.

        The order of registration is the order of invalidation: the query tier, then the edge.
        """
        from django_tiercache import checks, signals  # noqa: F401 -- checks register on import
        from django_tiercache.edge import checks as edge_checks  # noqa: F401
        from django_tiercache.edge import dispatch
        from django_tiercache.http import checks as http_checks  # noqa: F401
        from django_tiercache.query import checks as query_checks  # noqa: F401
        from django_tiercache.query import service

        service.connect()
        dispatch.connect()
        signals.connect()
