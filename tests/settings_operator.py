"""Test settings with purgers configured, for running ``tiercache_purge`` in a subprocess."""

from __future__ import annotations

from tests.settings import *  # noqa: F403
from tests.settings import TIERCACHE as BASE_TIERCACHE

FASTLY_TOKEN = "subprocess-fastly-token-5d1f"

TIERCACHE = {
    **BASE_TIERCACHE,
    "PURGERS": {
        "fastly": {
            "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
            "SERVICE_ID": "SU1Z0isxPaozGVKXdv0eY",
            "API_TOKEN": FASTLY_TOKEN,
        },
        "edge": {
            "BACKEND": "django_tiercache.purgers.locmem.LocMemPurger",
            "MAX_KEYS_PER_REQUEST": 2,
        },
    },
}
