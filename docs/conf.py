"""Sphinx configuration of the django-tiercache docs (``make docs``: warnings are errors)."""

from __future__ import annotations

import re
from pathlib import Path

_INIT = Path(__file__).resolve().parent.parent / "django_tiercache" / "__init__.py"
_VERSION = re.search(
    r'^__version__ = "([^"]+)"', _INIT.read_text() if _INIT.exists() else "", re.MULTILINE
)

project = "django-tiercache"
author = "django-tiercache developers"
copyright = "django-tiercache developers"
release = _VERSION.group(1) if _VERSION else "0"
version = release

extensions: list[str] = []
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
