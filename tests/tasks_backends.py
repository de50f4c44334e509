"""Django tasks backends for tests/test_django_tasks.py (Django 6: only ``TASKS`` imports it)."""

from __future__ import annotations

from typing import Any

from django.tasks.backends.dummy import DummyBackend


class BrokenBackend(DummyBackend):
    """A backend whose queue cannot be reached."""

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        raise ConnectionError("queue unreachable")
