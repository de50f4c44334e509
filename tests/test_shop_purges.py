"""Saving one product of the example shop purges exactly the pages that show it.

Every page of the seeded shop is rendered until its query-tier entries are stored (the keys of a
hit: what an edge caches in the steady state); a product is saved through the ORM with the
locmem purger; a page is purged when it carries one of the purged keys. Expected: the product's
own page, the list pages of its old and new category, and the home page (its top products are
chosen among all products) — nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.test_example_project import _env, _run

SCRIPT = r"""
import json
import sys

import django

django.setup()
from django.conf import settings
from django.core.management import call_command
from django.test import Client, override_settings

from django_tiercache.purgers import locmem
from shop.models import Category, Product

call_command("migrate", interactive=False, verbosity=0)
call_command("seed_shop", verbosity=0)
pages = ["/"]
pages += [f"/categories/{slug}/" for slug in Category.objects.values_list("slug", flat=True)]
pages += [f"/products/{pk}/" for pk in Product.objects.values_list("pk", flat=True)]
edge = {"edge": {"BACKEND": "django_tiercache.purgers.locmem.LocMemPurger"}}
client = Client()


def keys_of_every_page():
    keys = {}
    for url in pages:
        for _ in range(3):  # a miss, the keyed recompute, a hit
            response = client.get(url)
        assert response.status_code == 200, url
        keys[url] = set(response.headers["Surrogate-Key"].split())
    return keys


def purged_by(change):
    keys = keys_of_every_page()
    locmem.reset()
    change()
    purged = locmem.purged_keys()
    return {
        "pages": sorted(url for url, page in keys.items() if page & purged),
        "keys": sorted(purged),
    }


out = {"pages": len(pages)}
with override_settings(TIERCACHE={**settings.TIERCACHE, "PURGE_ASYNC": False, "PURGERS": edge}):
    product = Product.objects.get(slug="colombia-huila")
    out["product"] = product.pk

    def new_price():
        product.price = "12.50"
        product.save()

    def new_category():
        product.category = Category.objects.get(slug="tea")
        product.save()

    out["price"] = purged_by(new_price)
    out["move"] = purged_by(new_category)
json.dump(out, open(sys.argv[1], "w"))
"""


@pytest.fixture(scope="module")
def purges(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory: Path = tmp_path_factory.mktemp("shop_purges")
    output = directory / "out.json"
    _run(["-c", SCRIPT, str(output)], _env(directory / "db.sqlite3"))
    result: dict[str, Any] = json.loads(output.read_text())
    return result


def test_a_new_price_purges_the_product_its_category_and_the_home_page(
    purges: dict[str, Any],
) -> None:
    pk = purges["product"]
    assert purges["pages"] > 12  # every page of the shop was rendered and could be purged
    assert purges["price"]["pages"] == ["/", "/categories/coffee/", f"/products/{pk}/"]


def test_a_move_also_purges_the_new_category_and_nothing_else(purges: dict[str, Any]) -> None:
    pk = purges["product"]
    expected = ["/", "/categories/coffee/", "/categories/tea/", f"/products/{pk}/"]
    assert purges["move"]["pages"] == expected
