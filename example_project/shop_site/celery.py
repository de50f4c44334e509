"""The shop's Celery app, configured from Django settings (``CELERY_*``).

On embedded defaults ``CELERY_TASK_ALWAYS_EAGER`` is on: django-tiercache's purge task runs inline
after each commit. With ``SHOP_CELERY_BROKER_URL`` set, run a worker::

    cd example_project && ../.venv/bin/celery -A shop_site worker -Q tiercache-shop -l info
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop_site.settings")

app = Celery("shop_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
