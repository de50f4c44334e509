"""``SurrogateKeyMixin`` for users' models, and ``PurgeRequest``, the durable purge outbox."""

from __future__ import annotations

from collections.abc import Iterable

from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_tiercache.keys import default_keys


class SurrogateKeyMixin(models.Model):
    """Track a model: saving, deleting or changing its m2m relations invalidates its keys.

    Override :meth:`surrogate_keys` to add related keys, e.g. the category page of a product::

        def surrogate_keys(self):
            return [*super().surrogate_keys(), f"shop.category:{self.category_id}"]
    """

    class Meta:
        abstract = True

    def surrogate_keys(self) -> Iterable[str]:
        """Keys a change to this instance invalidates: its object key(s) and table key(s)."""
        return default_keys(self)


class PurgeRequest(models.Model):
    """Keys to purge at the edge, written in the same transaction as the change that needs them.

    A change writes a row when at least one purger is configured or when the query tier's
    invalidation failed (a manual purge always writes one); a transaction writes one row
    for all its changes (up to ``journal.MAX_KEYS_PER_ROW`` keys each), updated in place as the
    transaction collects keys. It stays ``pending`` until every purger has succeeded
    (``results`` remembers which did, so a retry skips them), and becomes ``failed`` when a
    purger refused it for good (bad token, bad request).
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    keys = models.JSONField(_("keys"), default=list)
    purge_all = models.BooleanField(_("purge everything"), default=False)
    created = models.DateTimeField(_("created"), auto_now_add=True)
    updated = models.DateTimeField(_("updated"), auto_now=True)
    status = models.CharField(
        _("status"), max_length=16, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True, default="")
    #: ``{"<purger name>": {"ok": bool, "error": str, "request_ids": [...], ...}}``; the query
    #: tier appears as ``"query"`` when its invalidation failed at commit.
    results = models.JSONField(_("results per purger"), default=dict)
    #: A tier invalidated at commit (the query tier) missed these keys; ``results`` says which.
    #: An indexed column, so a recovery finds such rows without reading every row's JSON.
    tier_missed = models.BooleanField(_("a tier missed these keys"), default=False)
    #: When the periodic redrive may send the row again (after a transient failure); null: now.
    next_attempt = models.DateTimeField(_("next attempt"), null=True, blank=True)
    #: A delivery holds the row until then: no other delivery sends it meanwhile.
    claimed_until = models.DateTimeField(_("claimed until"), null=True, blank=True)
    #: The claim token of the delivery holding the row ("" when none).
    claim = models.CharField(_("claim"), max_length=32, blank=True, default="")

    class Meta:
        verbose_name = _("purge request")
        verbose_name_plural = _("purge requests")
        ordering = ("-created", "-id")
        indexes = (
            models.Index(fields=("status", "created"), name="tiercache_status_created"),
            models.Index(
                fields=("status",),
                condition=models.Q(tier_missed=True),
                name="tiercache_tier_missed",
            ),
            models.Index(fields=("claim",), condition=~models.Q(claim=""), name="tiercache_claim"),
        )
        permissions = (("purge_cache", _("Can purge caches")),)

    def __str__(self) -> str:
        count = len(self.keys)
        what = (
            _("everything")
            if self.purge_all
            else ngettext("%(count)d key", "%(count)d keys", count) % {"count": count}
        )
        return f"#{self.pk} {what} ({self.status})"
