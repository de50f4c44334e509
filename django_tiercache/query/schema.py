"""A short digest of the installed models' schema, part of every query-tier entry key.

A deploy that changes a model (or Django, or this library) reads none of the old pickles.
"""

from __future__ import annotations

import functools
import hashlib

import django
from django.apps import apps

import django_tiercache


@functools.cache
def schema_version() -> str:
    digest = hashlib.blake2b(digest_size=6)
    digest.update(f"{django_tiercache.__version__}|{django.__version__}".encode())
    for model in sorted(apps.get_models(include_auto_created=True), key=lambda m: m._meta.label):
        fields = ",".join(
            f"{f.attname}:{f.column}:{type(f).__name__}" for f in model._meta.concrete_fields
        )
        digest.update(f"|{model._meta.label}:{model._meta.db_table}:{fields}".encode())
    return digest.hexdigest()
