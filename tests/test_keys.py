from __future__ import annotations

import pytest

from django_tiercache.keys import (
    key_factory,
    normalize_key,
    normalize_keys,
    object_key,
    object_keys,
    table_key,
    table_keys,
)
from django_tiercache.signals import instance_keys, is_tracked, register
from tests.testapp.models import Category, Product, Review, SpecialProduct, Tag, Untracked

HOSTILE = [
    "café-crème",
    "slug with spaces",
    "a,b,c",
    "line\r\nX-Injected: 1",
    "nul\x00byte",
    "tab\there",
    "x" * 5000,
    "ünïcødé" * 300,
    "%C3%A9",
    "100%",
    "emoji-🚀",
]


@pytest.mark.parametrize("key", HOSTILE)
def test_normalized_keys_are_header_safe(key: str) -> None:
    out = normalize_key(key)
    assert out
    assert len(out.encode()) <= 1024
    assert all(0x21 <= ord(c) <= 0x7E for c in out), out
    assert "," not in out


@pytest.mark.parametrize("key", HOSTILE)
def test_normalize_is_idempotent(key: str) -> None:
    once = normalize_key(key)
    assert normalize_key(once) == once


def test_visible_ascii_is_kept_as_is() -> None:
    assert normalize_key("shop.product:42") == "shop.product:42"
    assert normalize_key("a/b?c=d&e") == "a/b?c=d&e"


def test_encoding_is_percent_utf8() -> None:
    assert normalize_key("café") == "caf%C3%A9"
    assert normalize_key("a b,c") == "a%20b%2Cc"
    assert normalize_key("x\r\ny") == "x%0D%0Ay"


def test_long_keys_become_a_stable_distinct_digest() -> None:
    a, b = "p" * 5000, "p" * 4999 + "q"
    assert normalize_key(a) == normalize_key(a)
    assert normalize_key(a) != normalize_key(b)
    assert normalize_key(a).startswith("p" * 200 + "~")
    assert len(normalize_key("k" * 1024)) == 1024  # the limit itself is kept


def test_empty_and_non_string_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_key("")
    with pytest.raises(TypeError, match="int"):
        normalize_key(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="iterable of keys"):
        normalize_keys("abc")


def test_table_and_object_keys() -> None:
    assert table_key(Product) == "testapp.product"
    product = Product(pk=42)
    assert object_key(Product, 42) == "testapp.product:42"
    assert object_keys(product) == ["testapp.product:42"]


def test_object_key_of_a_hostile_pk_is_normalized() -> None:
    assert object_key(Category, "a b\r\n") == "testapp.category:a%20b%0D%0A"


def test_multi_table_inheritance_includes_parent_tables() -> None:
    special = SpecialProduct(pk=7)
    assert object_keys(special) == ["testapp.specialproduct:7", "testapp.product:7"]
    assert table_keys(SpecialProduct) == ["testapp.specialproduct", "testapp.product"]


def test_mixin_default_and_overridden_keys() -> None:
    assert set(Tag(pk=3).surrogate_keys()) == {"testapp.tag:3", "testapp.tag"}
    assert instance_keys(Product(pk=1, category_id=5)) == {
        "testapp.product:1",
        "testapp.product",
        "testapp.category:5",
    }


def test_registered_model_gets_default_and_declared_keys() -> None:
    assert is_tracked(Review)
    assert instance_keys(Review(pk=9, product_id=4)) == {
        "testapp.review:9",
        "testapp.review",
        "testapp.product:4",
        "reviews",
    }


def test_untracked_models() -> None:
    assert not is_tracked(Untracked)
    assert is_tracked(Product)


def test_key_factory_forms() -> None:
    obj = Product(pk=1, name="Blue Pen", category_id=5)
    assert list(key_factory("cat:{obj.category_id}")(obj)) == ["cat:5"]
    assert list(
        key_factory("tag:{itr}", iterate_on="names")(type("O", (), {"names": ["a", "b"]})())
    ) == [
        "tag:a",
        "tag:b",
    ]
    assert list(key_factory("n:{attr}", if_attr_exists="missing")(obj)) == []
    assert list(key_factory("n:{attr}", if_attr_exists="name")(obj)) == ["n:Blue Pen"]
    none_attr = type("O", (), {"parent": None})()
    assert list(key_factory("p:{attr.pk}", if_attr_exists="parent")(none_attr)) == []


def test_register_refuses_bad_input() -> None:
    with pytest.raises(TypeError, match="model class"):
        register("testapp.Product")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strings or callables"):
        register(Untracked, purge_keys=[42])  # type: ignore[list-item]
    assert not is_tracked(Untracked)
