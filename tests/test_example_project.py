"""The example shop works: system checks, migrations, idempotent seeding and its pages.

The shop runs in subprocesses (its own settings, ``example_project/shop_site/settings.py``) on its
embedded defaults, with a temporary SQLite file: fakeredis, Celery eager and the console purger.
``SHOP_*`` variables of the environment are dropped, so a real service is never touched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "example_project"

# Runs inside the example project: migrate, seed twice, then browse as a visitor and as the admin.
SCRIPT = r"""
import json
import sys

import django

django.setup()

from django.core.management import call_command
from django.test import Client

from django_tiercache.models import PurgeRequest
from django.contrib.auth import get_user_model
from shop.models import Category, Product, Review, Tag

call_command("migrate", interactive=False, verbosity=0)
call_command("seed_shop", verbosity=0)
call_command("seed_shop", verbosity=0)
out = {"counts": {m.__name__: m.objects.count() for m in (Category, Product, Review, Tag)}}
superusers = get_user_model().objects.filter(is_superuser=True)
out["admins"] = list(superusers.values_list("username", flat=True))


def page(client, path):
    response = client.get(path)
    return {
        "status": response.status_code,
        "cache_control": response.headers.get("Cache-Control", ""),
        "keys": response.headers.get("Surrogate-Key", "").split(),
        "cache_tag": response.headers.get("Cache-Tag", ""),
        "location": response.headers.get("Location", ""),
        "body": response.content.decode(),
    }


visitor = Client()
coffee = Category.objects.get(slug="coffee")
out["coffee_pk"] = coffee.pk
out["home"] = page(visitor, "/")
out["category"] = page(visitor, "/categories/coffee/")
out["missing"] = page(visitor, "/products/999999/")
out["products"] = []
for product in Product.objects.select_related("category").order_by("pk")[:3]:
    for attempt in ("miss", "hit"):
        found = page(visitor, f"/products/{product.pk}/")
        found.update(pk=product.pk, category_pk=product.category_id,
                     category_name=product.category.name, attempt=attempt)
        out["products"].append(found)

# Saving a product in the site (as the admin does): its page and its category page are fresh.
product = Product.objects.filter(category=coffee).order_by("pk").first()
page(visitor, f"/products/{product.pk}/")
before = PurgeRequest.objects.count()
product.price = "99.99"
product.save()
out["after_save"] = {
    "product": page(visitor, f"/products/{product.pk}/"),
    "category": page(visitor, "/categories/coffee/"),
    "purges": list(PurgeRequest.objects.order_by("pk")[before:].values("keys", "status")),
    "product_pk": product.pk,
}
Review.objects.create(product=product, author="tester", rating=5, body="A fresh review 4711")
out["after_review"] = page(visitor, f"/products/{product.pk}/")

out["account_anonymous"] = page(visitor, "/account/")
admin = Client()
assert admin.login(username="admin", password="admin")
out["account"] = page(admin, "/account/")
out["admin_products"] = page(admin, "/admin/shop/product/")
before = PurgeRequest.objects.count()
response = admin.post(
    "/admin/shop/product/",
    {"action": "purge_from_caches", "_selected_action": [product.pk]},
)
out["admin_purge"] = {
    "status": response.status_code,
    "rows": list(PurgeRequest.objects.order_by("pk")[before:].values("keys", "status")),
}
json.dump(out, open(sys.argv[1], "w"))
"""


def _env(database: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_")}
    env.update(
        DJANGO_SETTINGS_MODULE="shop_site.settings",
        SHOP_DATABASE_URL=f"sqlite:///{database}",  # an absolute path: sqlite:////tmp/...
        SHOP_DEBUG="0",
        # Never the cache of a `make demo` running on this machine.
        SHOP_DEMO_CACHE_FILE=str(database.parent / "no-demo-cache"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(EXAMPLE), env.get("PYTHONPATH")])),
    )
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("example_project")
    output = directory / "out.json"
    result = _run(["-c", SCRIPT, str(output)], _env(directory / "db.sqlite3"))
    data: dict[str, Any] = json.loads(output.read_text())
    data["stdout"] = result.stdout
    return data


def test_system_checks_pass(tmp_path: Path) -> None:
    result = _run(["manage.py", "check", "--fail-level", "WARNING"], _env(tmp_path / "db.sqlite3"))
    assert "no issues" in result.stdout


def test_seed_is_idempotent(shop: dict[str, Any]) -> None:
    assert shop["counts"] == {"Category": 4, "Product": 12, "Review": 18, "Tag": 5}
    assert shop["admins"] == ["admin"]
    # The console purger printed the seeding's purge (one transaction: one batch of keys).
    assert "[tiercache:console] purge" in shop["stdout"]


def test_public_pages_are_edge_cacheable(shop: dict[str, Any]) -> None:
    for name in ("home", "category"):
        found = shop[name]
        assert found["status"] == 200, name
        assert "public" in found["cache_control"], name
        assert "s-maxage=600" in found["cache_control"], name
        assert found["keys"], name
        assert found["cache_tag"] == ",".join(found["keys"]), name
    assert {"shop.home", "shop.product", "shop.category"} <= set(shop["home"]["keys"])
    assert f"shop.category:{shop['coffee_pk']}" in shop["category"]["keys"]
    assert shop["missing"]["status"] == 404


def test_product_pages_carry_object_keys(shop: dict[str, Any]) -> None:
    for found in shop["products"]:
        assert found["status"] == 200
        assert "public" in found["cache_control"]
        assert f"shop.product:{found['pk']}" in found["keys"]
        assert "shop.product" not in found["keys"]  # only object keys: other products don't purge


def test_product_pages_show_their_own_category(shop: dict[str, Any]) -> None:
    """Each product page, as a miss and as a hit, links its own category and carries its key."""
    for found in shop["products"]:
        where = f"product {found['pk']} ({found['attempt']})"
        assert 'href="/categories/' in found["body"], where
        assert f">{found['category_name']}</a>" in found["body"], where
        assert f"shop.category:{found['category_pk']}" in found["keys"], where
        assert not any(
            key.startswith("shop.product:") and key != f"shop.product:{found['pk']}"
            for key in found["keys"]
        ), where


def test_saving_a_product_refreshes_its_page_and_purges_its_category(
    shop: dict[str, Any],
) -> None:
    after = shop["after_save"]
    assert "$99.99" in after["product"]["body"]
    assert "$99.99" in after["category"]["body"]
    purged = {key for row in after["purges"] for key in row["keys"]}
    coffee_list = f"shop.product?category_id={shop['coffee_pk']}"  # the category page's scope
    assert {f"shop.product:{after['product_pk']}", coffee_list} <= purged
    assert {row["status"] for row in after["purges"]} == {"done"}
    # A new review (Review is registered with key_factory("shop.product:{obj.product_id}")).
    assert "A fresh review 4711" in shop["after_review"]["body"]


def test_account_page_stays_private(shop: dict[str, Any]) -> None:
    anonymous = shop["account_anonymous"]
    assert anonymous["status"] == 302
    assert anonymous["location"].startswith("/accounts/login/")
    account = shop["account"]
    assert account["status"] == 200
    assert "Hello, admin" in account["body"]
    for found in (anonymous, account):
        assert "private" in found["cache_control"]
        assert "public" not in found["cache_control"]
        assert not found["keys"]
        assert not found["cache_tag"]
    assert shop["admin_products"]["status"] == 200


def test_admin_purge_action(shop: dict[str, Any]) -> None:
    purge = shop["admin_purge"]
    assert purge["status"] == 302
    assert len(purge["rows"]) == 1
    product_pk = shop["after_save"]["product_pk"]
    assert {f"shop.product:{product_pk}", "shop.product"} <= set(purge["rows"][0]["keys"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_demo_shares_its_cache_with_manage_py_shell(tmp_path: Path) -> None:
    """`make demo PORT=…` serves the shop, and an edit made in `manage.py shell` (another
    process) shows on the next request: every process of the demo uses the demo's cache."""
    env = _env(tmp_path / "db.sqlite3")
    env["SHOP_DEMO_CACHE_FILE"] = str(tmp_path / "demo-cache")
    port = _free_port()
    demo = subprocess.Popen(
        [sys.executable, "demo.py", "--port", str(port)],
        cwd=EXAMPLE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        page = f"http://127.0.0.1:{port}/products/1/"

        def answer(seconds: float) -> str:
            """The page, once the server answers (runserver's autoreloader may be restarting)."""
            deadline = time.monotonic() + seconds
            while True:
                try:
                    return _get(page)
                except OSError:
                    assert demo.poll() is None, demo.communicate()[0][-3000:]
                    assert time.monotonic() < deadline, "the demo did not answer"
                    time.sleep(0.3)

        before = answer(90)
        assert "$432.10" not in before
        assert _get(page) == before  # served from the query tier now
        edit = "p = __import__('shop.models').models.Product.objects.get(pk=1); p.price = '432.10'"
        _run(["manage.py", "shell", "-c", f"{edit}; p.save()"], env)
        assert "$432.10" in answer(30)
    finally:
        demo.terminate()
        output = demo.communicate(timeout=30)[0]
    assert demo.returncode in (0, 143), output[-3000:]
    assert not (tmp_path / "demo-cache").exists()  # the demo cleans up after itself
