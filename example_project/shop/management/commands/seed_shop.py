"""``manage.py seed_shop``: categories, products, tags, reviews and an admin/admin superuser.

Idempotent: rows are looked up by slug (reviews by product and author) and only missing ones are
created, so running it again adds nothing. Everything happens in one transaction, without
savepoints, so its keys are invalidated, and purged, in one batch at the commit (each savepoint,
e.g. of ``get_or_create()``, would make a batch of its own).
"""

from decimal import Decimal
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from shop.models import Category, Product, Review, Tag


def _get_or_create(model: type[Any], defaults: dict[str, Any], **lookup: Any) -> tuple[Any, bool]:
    """``get_or_create()`` without its savepoint (safe here: one seeding process at a time)."""
    found = model.objects.filter(**lookup).first()
    if found is not None:
        return found, False
    return model.objects.create(**lookup, **defaults), True


CATEGORIES = {
    "coffee": ("Coffee", "Beans roasted this week."),
    "tea": ("Tea", "Leaves from small gardens."),
    "equipment": ("Equipment", "Grinders, kettles and brewers."),
    "books": ("Books", "Reading for the long brew."),
}
TAGS = {
    "organic": "Organic",
    "fair-trade": "Fair trade",
    "bestseller": "Bestseller",
    "new": "New",
    "gift": "Gift idea",
}
# slug: (name, category, price, featured, tags)
PRODUCTS = {
    "ethiopia-yirgacheffe": ("Ethiopia Yirgacheffe", "coffee", "14.50", True, ["organic", "new"]),
    "colombia-huila": ("Colombia Huila", "coffee", "12.00", False, ["fair-trade"]),
    "house-espresso": ("House Espresso", "coffee", "11.00", True, ["bestseller"]),
    "decaf-swiss-water": ("Decaf Swiss Water", "coffee", "13.00", False, []),
    "sencha-asahi": ("Sencha Asahi", "tea", "9.80", False, ["organic"]),
    "darjeeling-first-flush": ("Darjeeling First Flush", "tea", "16.00", True, ["new", "gift"]),
    "earl-grey": ("Earl Grey", "tea", "7.50", False, ["bestseller"]),
    "burr-grinder": ("Burr Grinder", "equipment", "129.00", True, ["gift"]),
    "gooseneck-kettle": ("Gooseneck Kettle", "equipment", "59.00", False, []),
    "pour-over-set": ("Pour-over Set", "equipment", "39.00", False, ["gift", "bestseller"]),
    "the-world-atlas-of-coffee": ("The World Atlas of Coffee", "books", "28.00", False, ["gift"]),
    "the-tea-book": ("The Tea Book", "books", "22.00", False, []),
}
AUTHORS = ("ada", "grace", "linus", "guido", "barbara")
REVIEW_TEXTS = (
    "Exactly as described.",
    "Would buy again.",
    "Good, but I expected more.",
    "My new favourite.",
    "Arrived quickly, well packed.",
)


class Command(BaseCommand):
    help = "Create the example shop's data and an admin/admin superuser (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        created: dict[str, int] = dict.fromkeys(("categories", "tags", "products", "reviews"), 0)
        with transaction.atomic():
            categories = {}
            for slug, (name, description) in CATEGORIES.items():
                categories[slug], new = _get_or_create(
                    Category, {"name": name, "description": description}, slug=slug
                )
                created["categories"] += new
            tags = {}
            for slug, name in TAGS.items():
                tags[slug], new = _get_or_create(Tag, {"name": name}, slug=slug)
                created["tags"] += new
            for index, (slug, (name, category, price, featured, tag_slugs)) in enumerate(
                PRODUCTS.items()
            ):
                product, new = _get_or_create(
                    Product,
                    {
                        "name": name,
                        "category": categories[category],
                        "price": Decimal(price),
                        "featured": featured,
                        "description": f"{name}: one of our {category} favourites.",
                    },
                    slug=slug,
                )
                created["products"] += new
                if new:
                    product.tags.set([tags[t] for t in tag_slugs])
                for offset in range(index % 4):  # 0 to 3 reviews per product
                    author = AUTHORS[(index + offset) % len(AUTHORS)]
                    _, new = _get_or_create(
                        Review,
                        {
                            "rating": 5 - (index + offset) % 3,
                            "body": REVIEW_TEXTS[(index * 2 + offset) % len(REVIEW_TEXTS)],
                        },
                        product=product,
                        author=author,
                    )
                    created["reviews"] += new
        self.stdout.write(
            ", ".join(f"{count} {what}" for what, count in created.items()) + " created"
        )

        user_model = get_user_model()
        if not user_model.objects.filter(username="admin").exists():
            user_model.objects.create_superuser("admin", "admin@example.com", "admin")
            self.stdout.write("superuser admin (password: admin) created")
