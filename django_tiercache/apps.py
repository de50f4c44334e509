from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TierCacheConfig(AppConfig):
    name = "django_tiercache"
    verbose_name = _("Tier cache")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_tiercache import checks, signals  # noqa: F401 -- checks register on import

        signals.connect()
