from __future__ import annotations

from collections.abc import Iterable

from django.db import models

from django_tiercache.models import SurrogateKeyMixin
from django_tiercache.query import TierCacheManager


class Category(SurrogateKeyMixin, models.Model):
    name = models.CharField(max_length=100)

    objects = TierCacheManager()


class Tag(SurrogateKeyMixin, models.Model):
    name = models.CharField(max_length=100)

    objects = TierCacheManager()


class Product(SurrogateKeyMixin, models.Model):
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="products")
    tags = models.ManyToManyField(Tag, related_name="products", blank=True)
    supplier = models.ForeignKey("Untracked", null=True, blank=True, on_delete=models.SET_NULL)

    objects = TierCacheManager()

    def surrogate_keys(self) -> Iterable[str]:
        return [*super().surrogate_keys(), f"testapp.category:{self.category_id}"]


class SpecialProduct(Product):
    """Multi-table inheritance: a change touches both tables."""

    badge = models.CharField(max_length=20, default="")


class Review(models.Model):
    """Not a mixin model: tracked through register() in TestAppConfig.ready()."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="reviews")
    text = models.TextField()

    objects = TierCacheManager()


class Untracked(models.Model):
    """Neither a mixin model nor registered: queries that read it are never cached."""

    name = models.CharField(max_length=100)
    friends = models.ManyToManyField("self", blank=True)


class Shelf(SurrogateKeyMixin, models.Model):
    """Referenced by its ``code`` (a ``to_field`` foreign key), not its primary key."""

    code = models.SlugField(unique=True)

    objects = TierCacheManager()


class Book(SurrogateKeyMixin, models.Model):
    """Scoped fields of each kind: a nullable ``to_field`` foreign key, a boolean, an indexed
    integer, indexed text; no keys of its own beyond the defaults."""

    title = models.CharField(max_length=100, db_index=True)
    shelf = models.ForeignKey(
        Shelf,
        to_field="code",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="books",
    )
    active = models.BooleanField(default=True)
    pages = models.IntegerField(default=0, db_index=True)
    words = models.IntegerField(default=0)  # neither indexed nor unique: not scoped
    price = models.DecimalField(max_digits=8, decimal_places=2, default=0)

    objects = TierCacheManager()
