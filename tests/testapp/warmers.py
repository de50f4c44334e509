"""Query-tier warmers of the test app, found by ``tiercache_warm --queries`` (autodiscovery)."""

from __future__ import annotations

import django_tiercache
from tests.testapp.models import Category


@django_tiercache.warmer
def categories() -> None:
    list(Category.objects.cached())
