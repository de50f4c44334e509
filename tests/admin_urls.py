"""URLs of the admin tests: the default admin site (purge log) and a shop admin site."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from django_tiercache.admin import TierCacheAdminMixin, add_site_action
from tests.testapp.models import Category, Product

shop_site = admin.AdminSite(name="shop_admin")
add_site_action(shop_site)


@admin.register(Product, site=shop_site)
class ProductAdmin(TierCacheAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    pass


shop_site.register(Category)  # a plain ModelAdmin: only the site-wide action

urlpatterns = [path("admin/", admin.site.urls), path("shop-admin/", shop_site.urls)]
