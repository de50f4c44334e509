"""Check requests the purgers send against the CDN APIs' shapes in ``tests/cdn_api/``.

``tests/cdn_api/`` holds the Fastly and Cloudflare purge endpoints as small OpenAPI fragments and
their limits, each value with the vendor page it comes from. ``validate`` is a small JSON-schema
subset (``$ref``,
``type``, ``properties``, ``required``, ``items``, ``enum``, ``maxLength``, ``minimum``,
``anyOf``, ``allOf``, ``nullable``, ``additionalProperties``): enough for these excerpts.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

SPECS = Path(__file__).resolve().parent / "cdn_api"


@cache
def spec(name: str) -> dict[str, Any]:
    """One file of ``tests/cdn_api/``, parsed."""
    return dict(yaml.safe_load((SPECS / name).read_text()))


def fastly() -> dict[str, Any]:
    return spec("fastly_purge.yaml")


def cloudflare() -> dict[str, Any]:
    return spec("cloudflare_purge.yaml")


def limits() -> dict[str, Any]:
    return spec("limits.yaml")


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def validate(
    document: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$"
) -> None:
    """Raise ``AssertionError`` naming the place where ``value`` breaks ``schema``."""
    schema = _resolve(document, schema)
    if value is None and schema.get("nullable"):
        return
    for sub in schema.get("allOf", []):
        validate(document, sub, value, where)
    if "anyOf" in schema:
        errors = []
        for sub in schema["anyOf"]:
            try:
                validate(document, sub, value, where)
                break
            except AssertionError as exc:
                errors.append(str(exc))
        else:
            raise AssertionError(f"{where}: matches no anyOf branch: {errors}")
    kind = schema.get("type")
    if kind:
        ok = isinstance(value, _TYPES[kind]) and not (
            kind in ("integer", "number") and isinstance(value, bool)
        )
        assert ok, f"{where}: {value!r:.60} is not {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, str) and "maxLength" in schema:
        assert len(value) <= schema["maxLength"], f"{where}: longer than {schema['maxLength']}"
    if isinstance(value, int | float) and "minimum" in schema:
        assert value >= schema["minimum"], f"{where}: below {schema['minimum']}"
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            validate(document, schema["items"], item, f"{where}[{i}]")
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing required {name!r}"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                validate(document, properties[name], item, f"{where}.{name}")
            elif extra is False:
                raise AssertionError(f"{where}: unexpected property {name!r}")
            elif isinstance(extra, dict):
                validate(document, extra, item, f"{where}.{name}")


def match_path(document: dict[str, Any], url: str) -> tuple[str, dict[str, str]]:
    """The spec path template ``url`` matches (after the spec's server URL) and its parameters."""
    (server,) = document["servers"]
    base = urlsplit(server["url"])
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == (base.scheme, base.netloc), f"{url} is not {base}"
    path = parts.path.removeprefix(base.path)
    for template in document["paths"]:
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        found = re.fullmatch(pattern, path)
        if found:
            return template, found.groupdict()
    raise AssertionError(f"{path} matches no path of the spec")


def operation(document: dict[str, Any], template: str, method: str) -> dict[str, Any]:
    operations = document["paths"][template]
    assert method.lower() in operations, f"{method} {template} is not in the spec"
    return dict(operations[method.lower()])


def header_parameters(document: dict[str, Any], op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The header parameters the operation declares, by lower-case name."""
    params = (_resolve(document, p) for p in op.get("parameters", []))
    return {p["name"].lower(): p for p in params if p["in"] == "header"}
