"""The shop's models and how each one maps to surrogate keys.

- ``Category`` and ``Product`` use ``SurrogateKeyMixin``: saving one invalidates its object key
  (``shop.product:42``), its table key (``shop.product``) and the scope keys of its values
  (``shop.product?category_id=3``). A category page lists ``filter(category_id=3)``: it is tagged
  with that scope key and the object keys of the products it shows, so saving a product purges
  its own page, the pages of its old and new category and the pages listing every product
  (the home page), and no other page.
- ``Tag`` only uses ``TierCacheManager``, which tracks it too (object and table keys).
- ``Review`` is plain Django; ``ShopConfig.ready()`` registers it with ``register()`` so that a new
  review purges its product's page.
"""

from django.db import models
from django.urls import reverse

from django_tiercache.models import SurrogateKeyMixin
from django_tiercache.query import TierCacheManager


class Category(SurrogateKeyMixin, models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(unique=True)
    description = models.TextField(blank=True)

    objects = TierCacheManager()

    class Meta:
        ordering = ("name",)
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("category", args=[self.slug])


class Tag(models.Model):
    name = models.CharField(max_length=50)
    slug = models.SlugField(unique=True)

    objects = TierCacheManager()

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class Product(SurrogateKeyMixin, models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(unique=True)
    category = models.ForeignKey(Category, on_delete=models.CASCADE, related_name="products")
    price = models.DecimalField(max_digits=10, decimal_places=2)
    description = models.TextField(blank=True)
    featured = models.BooleanField(default=False)
    tags = models.ManyToManyField(Tag, blank=True, related_name="products")

    objects = TierCacheManager()

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("product", args=[self.pk])


class Review(models.Model):
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="reviews")
    author = models.CharField(max_length=100)
    rating = models.PositiveSmallIntegerField(choices=[(n, str(n)) for n in range(1, 6)])
    body = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("-created", "-id")

    def __str__(self) -> str:
        return f"{self.rating}/5 by {self.author} on {self.product_id}"
