"""A second process for the fault tests (tests/test_query_faults.py): a reader that is warm
before the fault and sees only what its own cached reads show it.

Configured like the suite (tests/settings.py) from its environment, plus
``TIERCACHE_TEST_KEY_PREFIX`` (the test's) and ``TIERCACHE_TEST_RECOVERY_POLL`` (seconds, or
``none``). Reads commands from stdin, one a line:
``read <pk>`` answers ``<price> hit`` or ``<price> miss`` (whether the product's table was
queried); ``quit`` (or the end of stdin) ends it.
"""

from __future__ import annotations

import os
import sys

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.conf import settings
    from django.db import connection
    from django.test.utils import CaptureQueriesContext, override_settings

    from tests.testapp.models import Product

    poll = os.environ.get("TIERCACHE_TEST_RECOVERY_POLL", "none")
    recovery_poll = None if poll == "none" else float(poll)
    key_prefix = os.environ["TIERCACHE_TEST_KEY_PREFIX"]
    tiercache = {**settings.TIERCACHE, "KEY_PREFIX": key_prefix, "RECOVERY_POLL": recovery_poll}
    override_settings(TIERCACHE=tiercache).enable()
    for line in sys.stdin:
        command, *args = line.split()
        if command == "quit":
            return
        with CaptureQueriesContext(connection) as queries:
            price = Product.objects.cached().get(pk=int(args[0])).price
        read = any("testapp_product" in query["sql"] for query in queries.captured_queries)
        print(price, "miss" if read else "hit", flush=True)


if __name__ == "__main__":
    main()
