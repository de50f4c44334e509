"""Admin: the "Purge selected from caches" action and the PurgeRequest log."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.test.client import Client as ClientType
from django.urls import reverse

from django_tiercache.edge.purgers import locmem
from django_tiercache.models import PurgeRequest
from django_tiercache.query import query_results
from django_tiercache.redact import MASK
from tests.test_command_purge import redis_down
from tests.testapp.models import Category, Product

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.admin_urls")]

ACTION = "purge_from_caches"
PRODUCTS = "/shop-admin/testapp/product/"
CATEGORIES = "/shop-admin/testapp/category/"
LOG = "/admin/django_tiercache/purgerequest/"
TOKEN = "admin-test-fastly-token-77e1"
LOCMEM = {"BACKEND": "django_tiercache.purgers.locmem.LocMemPurger"}

CaptureCallbacks = Callable[..., Any]


def user(name: str, *perms: str, superuser: bool = False) -> User:
    account = User.objects.create_user(name, password="pw", is_staff=True, is_superuser=superuser)
    for perm in perms:
        app_label, codename = perm.split(".")
        account.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return account


SHOP_PERMS = (
    "testapp.view_product",
    "testapp.change_product",
    "testapp.delete_product",
    "testapp.view_category",
    "testapp.change_category",
)


@pytest.fixture
def shop() -> tuple[Category, list[Product]]:
    category = Category.objects.create(name="Shoes")
    products = [Product.objects.create(name=n, category=category) for n in ("Boot", "Clog")]
    PurgeRequest.objects.all().delete()  # the rows of these saves; the tests count their own
    return category, products


def login(account: User, *, csrf: bool = True) -> ClientType:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(account)
    return client


def actions(client: ClientType, url: str) -> list[str]:
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["action_form"]  # None when the user has no action at all
    return [] if form is None else [name for name, _ in form.fields["action"].choices]


def post_action(
    client: ClientType, url: str, action: str, pks: list[Any], capture: CaptureCallbacks
) -> Any:
    """Post the changelist's action form with its CSRF token, running on_commit callbacks."""
    client.get(url)
    data = {
        "action": action,
        "index": "0",
        "_selected_action": [str(pk) for pk in pks],
        "csrfmiddlewaretoken": client.cookies["csrftoken"].value,
    }
    with capture(execute=True):
        return client.post(url, data, follow=True)


def test_staff_without_the_permission_neither_sees_nor_runs_the_action(
    purgers: list[locmem.PurgeCall],
    shop: tuple[Category, list[Product]],
    django_capture_on_commit_callbacks: CaptureCallbacks,
) -> None:
    client = login(user("clerk", *SHOP_PERMS))
    assert actions(client, PRODUCTS) == ["", "delete_selected"]

    response = post_action(
        client, PRODUCTS, ACTION, [p.pk for p in shop[1]], django_capture_on_commit_callbacks
    )

    assert response.status_code == 200
    assert "No action selected." in response.content.decode()
    assert not PurgeRequest.objects.exists()
    assert purgers == []


def test_the_site_wide_action_refuses_staff_without_the_permission(
    purgers: list[locmem.PurgeCall],
    shop: tuple[Category, list[Product]],
    django_capture_on_commit_callbacks: CaptureCallbacks,
) -> None:
    client = login(user("clerk", *SHOP_PERMS))

    response = post_action(
        client, CATEGORIES, ACTION, [shop[0].pk], django_capture_on_commit_callbacks
    )

    assert "You do not have permission to purge caches." in response.content.decode()
    assert not PurgeRequest.objects.exists()
    assert purgers == []


def test_staff_with_the_permission_enqueue_a_purge_of_the_selected_objects(
    purgers: list[locmem.PurgeCall],
    shop: tuple[Category, list[Product]],
    django_capture_on_commit_callbacks: CaptureCallbacks,
) -> None:
    category, products = shop
    client = login(user("editor", *SHOP_PERMS, "django_tiercache.purge_cache"))
    assert "Purge selected from caches" in dict(
        client.get(PRODUCTS).context["action_form"].fields["action"].choices
    ).get(ACTION, "")

    response = post_action(
        client, PRODUCTS, ACTION, [p.pk for p in products], django_capture_on_commit_callbacks
    )

    row = PurgeRequest.objects.get()
    expected = {
        f"testapp.product:{products[0].pk}",
        f"testapp.product:{products[1].pk}",
        "testapp.product",
        f"testapp.category:{category.pk}",
    }
    assert set(row.keys) == expected
    assert locmem.purged_keys("edge") == expected
    page = response.content.decode()
    link = reverse("admin:django_tiercache_purgerequest_change", args=[row.pk])
    assert "2 objects, 4 keys enqueued for purging" in page
    assert f'<a href="{link}">' in page


def test_the_action_needs_a_csrf_token(
    purgers: list[locmem.PurgeCall], shop: tuple[Category, list[Product]]
) -> None:
    client = login(user("editor", *SHOP_PERMS, "django_tiercache.purge_cache"))

    response = client.post(
        PRODUCTS, {"action": ACTION, "_selected_action": [str(p.pk) for p in shop[1]]}
    )

    assert response.status_code == 403
    assert not PurgeRequest.objects.exists()


def test_a_superuser_can_purge_from_any_model_admin(
    purgers: list[locmem.PurgeCall],
    shop: tuple[Category, list[Product]],
    django_capture_on_commit_callbacks: CaptureCallbacks,
) -> None:
    client = login(user("root", superuser=True))
    assert ACTION in actions(client, CATEGORIES)  # site-wide action on a plain ModelAdmin

    response = post_action(
        client, CATEGORIES, ACTION, [shop[0].pk], django_capture_on_commit_callbacks
    )

    assert "1 object, 2 keys enqueued for purging" in response.content.decode()
    assert locmem.purged_keys() == {f"testapp.category:{shop[0].pk}", "testapp.category"}


# -- the purge log ---------------------------------------------------------------------------


@pytest.fixture
def log(settings: Any) -> dict[str, PurgeRequest]:
    settings.TIERCACHE = {
        **settings.TIERCACHE,
        "PURGERS": {
            "edge": LOCMEM,
            "fastly": {
                "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
                "SERVICE_ID": "SU1Z0isxPaozGVKXdv0eY",
                "API_TOKEN": TOKEN,
            },
        },
    }
    failed = PurgeRequest.objects.create(
        keys=["shop.product:1", "shop.product"],
        status=PurgeRequest.Status.FAILED,
        attempts=2,
        # Purger errors never hold a token; an old row written by a buggy backend might.
        last_error=f"fastly: POST api.fastly.com/service/x/purge: HTTP 403: bad key {TOKEN}",
        results={
            "edge": {"ok": True, "keys": 2, "request_ids": [], "error": ""},
            "fastly": {
                "ok": False,
                "keys": 0,
                "error": f"fastly: HTTP 403: bad key {TOKEN}",
                "retryable": False,
                "status_code": 403,
                "request_ids": [],
            },
        },
    )
    done = PurgeRequest.objects.create(keys=["a"], status=PurgeRequest.Status.DONE, attempts=1)
    everything = PurgeRequest.objects.create(purge_all=True)
    return {"failed": failed, "done": done, "everything": everything}


def test_the_log_lists_status_attempts_keys_and_errors_without_tokens(
    log: dict[str, PurgeRequest],
) -> None:
    client = login(user("root", superuser=True))

    page = client.get(LOG).content.decode()

    for column in ("Created", "Status", "Attempts", "Keys", "Last error"):
        assert column in page
    assert "everything" in page
    assert "HTTP 403: bad key" in page
    assert TOKEN not in page
    assert MASK in page

    filtered = client.get(LOG, {"status__exact": "failed"})
    assert [row.pk for row in filtered.context["cl"].result_list] == [log["failed"].pk]


def test_the_detail_is_read_only_with_per_purger_results(log: dict[str, PurgeRequest]) -> None:
    client = login(user("root", superuser=True))

    response = client.get(f"{LOG}{log['failed'].pk}/change/")

    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="_save"' not in page
    assert "<pre>shop.product:1\nshop.product</pre>" in page
    assert (
        "<td>fastly</td><td>refused</td><td>0</td><td>HTTP 403; fastly: HTTP 403: bad key" in page
    )
    assert "<td>edge</td><td>ok</td><td>2</td>" in page
    assert TOKEN not in page
    assert client.get(f"{LOG}add/").status_code == 403


def test_retry_sends_failed_requests_again(
    log: dict[str, PurgeRequest],
    django_capture_on_commit_callbacks: CaptureCallbacks,
    settings: Any,
) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGERS": {"edge": LOCMEM}}
    client = login(user("ops", "django_tiercache.purge_cache"))
    assert "retry" in actions(client, LOG)

    pks = [log["failed"].pk, log["done"].pk]
    response = post_action(client, LOG, "retry", pks, django_capture_on_commit_callbacks)

    assert "1 purge request sent again; 1 already done was left alone." in (
        response.content.decode()
    )
    log["failed"].refresh_from_db()
    assert log["failed"].status == PurgeRequest.Status.DONE
    assert locmem.calls == []  # "edge" had already purged these keys: not called again


def test_retry_is_absent_without_the_permission(log: dict[str, PurgeRequest]) -> None:
    client = login(user("auditor", "django_tiercache.view_purgerequest"))

    assert "retry" not in actions(client, LOG)
    assert TOKEN not in client.get(f"{LOG}{log['failed'].pk}/change/").content.decode()


@pytest.mark.django_db(transaction=True)
def test_the_action_says_purged_when_the_purge_already_finished(
    settings: Any, shop: tuple[Category, list[Product]]
) -> None:
    """Outside a transaction the purge is delivered inline before the message is written: the
    message says what happened, not "enqueued"."""
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGE_ASYNC": False, "PURGERS": {"edge": LOCMEM}}
    client = login(user("root", superuser=True), csrf=False)
    response = client.post(
        CATEGORIES, {"action": ACTION, "_selected_action": [str(shop[0].pk)]}, follow=True
    )
    page = response.content.decode()
    assert "1 object, 2 keys purged" in page
    assert "(done)" in page
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE


@pytest.mark.django_db(transaction=True)
def test_a_purge_the_query_tier_missed_is_not_called_purged_and_is_replayed(
    shop: tuple[Category, list[Product]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No edge purger, the query tier down during the purge: the message does not say purged,
    and the purge is replayed before the tier serves anything again."""
    category = shop[0]
    keys = [f"testapp.category:{category.pk}"]
    query_results.set("category page", "old", keys=keys)
    client = login(user("root", superuser=True), csrf=False)
    with monkeypatch.context() as down:
        down.setattr(query_results.transport, "invalidate", redis_down)
        response = client.post(
            CATEGORIES, {"action": ACTION, "_selected_action": [str(category.pk)]}, follow=True
        )
    page = response.content.decode()
    assert "2 keys purged" not in page
    assert "(pending)" in page
    assert query_results.get("category page", keys=keys) is None
