"""Admin: the "Purge selected from caches" action, and the purge log (``PurgeRequest``).

Add the action to a ModelAdmin with :class:`TierCacheAdminMixin`, or to every ModelAdmin of the
default admin site with ``TIERCACHE["ADMIN_ACTION"] = True``. It needs the permission
``django_tiercache.purge_cache`` (superusers have it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.options import IS_POPUP_VAR
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_tiercache import manual
from django_tiercache.conf import tiercache_settings
from django_tiercache.models import PurgeRequest
from django_tiercache.redact import redact
from django_tiercache.signals import instance_keys

__all__ = ["PERMISSION", "PurgeRequestAdmin", "TierCacheAdminMixin", "purge_from_caches"]

#: The permission the purge and retry actions need.
PERMISSION = "django_tiercache.purge_cache"

if TYPE_CHECKING:  # ModelAdmin is generic for the type checker only
    _Mixin = admin.ModelAdmin[Any]
    _PurgeRequestModelAdmin = admin.ModelAdmin[PurgeRequest]
else:
    _Mixin = object
    _PurgeRequestModelAdmin = admin.ModelAdmin


def can_purge(request: HttpRequest) -> bool:
    """Whether the user may purge caches (active superusers have every permission)."""
    return request.user.has_perm(PERMISSION)


def _purge_request_link(row: PurgeRequest, site: admin.AdminSite) -> str | None:
    """The change page of ``row`` in ``site``, else in the default admin site, else None."""
    for current_app in (site.name, None):
        try:
            return reverse(
                "admin:django_tiercache_purgerequest_change", args=[row.pk], current_app=current_app
            )
        except NoReverseMatch:
            continue
    return None


@admin.action(description=_("Purge selected from caches"))
def purge_from_caches(
    modeladmin: admin.ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any]
) -> None:
    """Invalidate the keys of the selected objects at every tier, through the outbox."""
    if not can_purge(request):
        modeladmin.message_user(
            request, _("You do not have permission to purge caches."), messages.ERROR
        )
        return
    objects: list[Model] = list(queryset)
    keys: set[str] = set()
    for obj in objects:
        keys |= instance_keys(obj)
    row = manual.request_purge(keys, using=queryset.db)
    row.refresh_from_db()  # an inline or eager delivery may already have finished it
    if row.status == PurgeRequest.Status.DONE:
        what = _("purged")
    elif row.status == PurgeRequest.Status.FAILED:
        what = _("not purged")
    else:
        what = _("enqueued for purging")
    summary = _("%(objects)s, %(keys)s %(what)s") % {
        "objects": ngettext("%d object", "%d objects", len(objects)) % len(objects),
        "keys": ngettext("%d key", "%d keys", len(keys)) % len(keys),
        "what": what,
    }
    link = _purge_request_link(row, modeladmin.admin_site)
    if link is None:
        modeladmin.message_user(request, f"{summary}: {row}.", messages.SUCCESS)
    else:
        message = format_html('{}: <a href="{}">{}</a>.', summary, link, str(row))
        modeladmin.message_user(request, message, messages.SUCCESS)


class TierCacheAdminMixin(_Mixin):
    """Adds "Purge selected from caches" for users with ``django_tiercache.purge_cache``.

    Put it before ``admin.ModelAdmin``: ``class ProductAdmin(TierCacheAdminMixin,
    admin.ModelAdmin)``. Users without the permission do not see the action.
    """

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        # Django 6.1 passes ``action_location``; the purge acts on the change list only.
        if action_location is None:  # Django < 6.1
            actions: dict[str, Any] = super().get_actions(request)
        else:
            actions = super().get_actions(request, action_location)  # type: ignore[call-arg]
            if getattr(action_location, "value", None) != "CHANGE_LIST":
                return actions
        if self.actions is None or IS_POPUP_VAR in request.GET:
            return actions
        name = purge_from_caches.__name__
        if can_purge(request):
            actions[name] = self.get_action(purge_from_caches)
        else:
            actions.pop(name, None)  # the site-wide action, if enabled
        return actions


def add_site_action(site: admin.AdminSite) -> None:
    """Offer "Purge selected from caches" on every ModelAdmin of ``site``.

    Users without the permission see it on ModelAdmins without :class:`TierCacheAdminMixin`,
    and are refused with a message when they use it.
    """
    site.add_action(purge_from_caches)


if tiercache_settings.ADMIN_ACTION:
    add_site_action(admin.site)


@admin.register(PurgeRequest)
class PurgeRequestAdmin(_PurgeRequestModelAdmin):
    """The purge log: read-only, filterable by status, with a "Retry" action."""

    list_display = ("__str__", "created", "status", "attempts", "key_count", "error_summary")
    list_filter = ("status", "purge_all")
    actions = ("retry",)
    fields = (
        "status",
        "purge_all",
        "created",
        "updated",
        "attempts",
        "key_list",
        "purger_results",
        "error",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_view_permission(request, obj) or can_purge(request)

    def has_purge_cache_permission(self, request: HttpRequest) -> bool:
        return can_purge(request)

    @admin.display(description=_("keys"))
    def key_count(self, obj: PurgeRequest) -> str:
        return str(_("everything")) if obj.purge_all else str(len(obj.keys))

    @admin.display(description=_("last error"))
    def error_summary(self, obj: PurgeRequest) -> str:
        return Truncator(redact(obj.last_error)).chars(100)

    @admin.display(description=_("last error"))
    def error(self, obj: PurgeRequest) -> str:
        return redact(obj.last_error) or "-"

    @admin.display(description=_("keys"))
    def key_list(self, obj: PurgeRequest) -> SafeString:
        if obj.purge_all:
            return format_html("<strong>{}</strong>", _("everything"))
        return format_html("<pre>{}</pre>", "\n".join(str(key) for key in obj.keys))

    @admin.display(description=_("results per purger"))
    def purger_results(self, obj: PurgeRequest) -> SafeString:
        if not obj.results:
            return format_html("<p>{}</p>", _("No purger has been called yet."))
        header = format_html_join(
            "",
            "<th>{}</th>",
            ((label,) for label in (_("tier"), _("outcome"), _("keys"), _("details"))),
        )
        rows = format_html_join("", "<tr>{}</tr>", _result_cells(obj.results))
        return format_html(
            "<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", header, rows
        )

    @admin.action(description=_("Retry"), permissions=["purge_cache"])
    def retry(self, request: HttpRequest, queryset: QuerySet[PurgeRequest]) -> None:
        """Send the selected pending or failed requests to the purgers again."""
        selected = list(queryset.values_list("pk", flat=True))
        sent = manual.retry(selected, queryset.db)
        message = ngettext(
            "%(sent)d purge request sent again",
            "%(sent)d purge requests sent again",
            len(sent),
        ) % {"sent": len(sent)}
        if len(sent) < len(selected):
            message += ngettext(
                "; %(done)d already done was left alone",
                "; %(done)d already done were left alone",
                len(selected) - len(sent),
            ) % {"done": len(selected) - len(sent)}
        self.message_user(request, f"{message}.", messages.SUCCESS)


def _result_cells(results: dict[str, Any]) -> Iterable[tuple[SafeString]]:
    """Table cells of each purger's result; error text is redacted (it never holds a token)."""
    for name, result in sorted(results.items()):
        if result.get(manual.SKIPPED):
            outcome = _("skipped")
        elif result.get("ok"):
            outcome = _("ok")
        elif result.get("retryable") is False:
            outcome = _("refused")
        else:
            outcome = _("failed (transient), pending for the redrive")
        details = [
            f"HTTP {result['status_code']}" if result.get("status_code") else "",
            ", ".join(map(str, result.get("request_ids") or ())),
            redact(str(result.get("error") or "")),
        ]
        yield (
            format_html(
                "<td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                name,
                outcome,
                result.get("keys", ""),
                "; ".join(part for part in details if part) or "-",
            ),
        )
