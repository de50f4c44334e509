"""Sphinx configuration of the django-tiercache docs (``make docs``: warnings are errors)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import django
from django.conf import settings

_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_ROOT))
# autodoc imports the package's modules: they need Django's app registry, as in a project.
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_tiercache"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
)
django.setup()

_INIT = _ROOT / "django_tiercache" / "__init__.py"
_VERSION = re.search(
    r'^__version__ = "([^"]+)"', _INIT.read_text() if _INIT.exists() else "", re.MULTILINE
)

project = "django-tiercache"
author = "django-tiercache developers"
copyright = "django-tiercache developers"
release = _VERSION.group(1) if _VERSION else "0"
version = release

extensions = ["sphinx.ext.autodoc"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
templates_path: list[str] = []
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"
highlight_language = "python"
pygments_style = "sphinx"

html_theme = "alabaster"
html_title = f"django-tiercache {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "One vocabulary of surrogate keys for every cache tier of a Django site.",
}
