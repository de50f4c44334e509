"""Django's own ORM test suite, run with every queryset cached: the oracle of the query tier.

``python -m djangosuite`` (``make django-suite``) downloads the Django sdist that matches the
installed Django, runs the ORM test modules of its ``tests/`` unchanged with Django's
``runtests.py`` once as they are (the baseline) and once per mode with every manager's queryset a
``CachedQuerySet`` with ``.cached()`` switched on, and prints per module the tests, failures and
errors of the baseline and of each mode, each new failure classified.

Not part of the package and not collected by pytest (its modules are not named ``test_*``).
"""
