"""The example shop's project; importing it loads its Celery app (``celery -A shop_site``)."""

from shop_site.celery import app as celery_app

__all__ = ["celery_app"]
