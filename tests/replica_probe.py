"""The purger of the edge replica test (tests/replica_scenario.py): it looks at the replica."""

from __future__ import annotations

from typing import ClassVar

from django_tiercache.edge.purgers.base import BasePurger, PurgeResult


class ReplicaProbePurger(BasePurger):
    """Records, for each product key it is asked to purge, the name the *replica* has then: what
    a CDN refilling at that moment would get."""

    seen: ClassVar[dict[int, str | None]] = {}

    def send_batch(self, keys: list[str], *, soft: bool) -> PurgeResult:
        from tests.testapp.models import Product

        for key in keys:
            model, _, pk = key.partition(":")
            if model == "testapp.product" and pk:
                rows = Product.objects.using("replica").filter(pk=int(pk))
                self.seen[int(pk)] = rows.values_list("name", flat=True).first()
        return PurgeResult(ok=True, keys=tuple(keys))

    def purge_all(self) -> PurgeResult:
        return PurgeResult(ok=True)
