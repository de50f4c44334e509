"""The benchmark's models: 100 groups of 100 items (10,000 rows).

``objects`` is a TierCacheManager only in the tiercache worker; ``plain`` is Django's manager,
used by the other contenders so that they pay nothing for django-tiercache.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

if "django_tiercache" in settings.INSTALLED_APPS:
    from django_tiercache.query import TierCacheManager as Manager
else:
    Manager = models.Manager  # type: ignore[misc,assignment]


class Group(models.Model):
    name = models.CharField(max_length=50)

    objects = Manager()
    plain = models.Manager()  # noqa: DJ012


class Item(models.Model):
    name = models.CharField(max_length=50)
    price = models.IntegerField(default=0)
    group = models.ForeignKey(Group, on_delete=models.CASCADE)

    objects = Manager()
    plain = models.Manager()  # noqa: DJ012
