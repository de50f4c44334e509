"""Admin for every shop model. Saving in the admin invalidates the query tier and purges the edge,
like any other save (the console purger prints the purge). ``TierCacheAdminMixin`` adds the
"Purge selected from caches" action for users with ``django_tiercache.purge_cache``; the purge
log is under "Tier cache > Purge requests"."""

from django.contrib import admin

from django_tiercache.admin import TierCacheAdminMixin
from shop.models import Category, Product, Review, Tag


class CacheAdmin(TierCacheAdminMixin, admin.ModelAdmin):
    pass


@admin.register(Category)
class CategoryAdmin(CacheAdmin):
    list_display = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(Tag)
class TagAdmin(CacheAdmin):
    list_display = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}


class ReviewInline(admin.TabularInline):
    model = Review
    extra = 0


@admin.register(Product)
class ProductAdmin(CacheAdmin):
    list_display = ("name", "category", "price", "featured")
    list_editable = ("price", "featured")
    list_filter = ("category", "featured", "tags")
    search_fields = ("name",)
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("tags",)
    inlines = (ReviewInline,)


@admin.register(Review)
class ReviewAdmin(CacheAdmin):
    list_display = ("product", "author", "rating", "created")
    list_filter = ("rating",)
    list_select_related = ("product",)
