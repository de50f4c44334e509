"""The shop's query-tier warmers, run by ``manage.py tiercache_warm --queries``.

The command imports the ``warmers`` module of every installed app; each ``@warmer`` function
evaluates the cached querysets of the home page, so the first visitor after a deploy or a purge
finds them in the query tier. (On the embedded defaults the query tier is fakeredis, private to
each process: warming from another process only helps with ``SHOP_REDIS_URL``.)
"""

import django_tiercache
from shop.views import all_categories, top_products


@django_tiercache.warmer
def home_page() -> None:
    list(all_categories())
    list(top_products())
