"""The edge tier on Django 6's tasks framework (``django.tasks``): chosen after Celery, before
synchronous delivery, and delivering outbox rows as the Celery tasks do."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import django
import pytest
import responses
from django.core import checks
from django.db import transaction
from django.utils import timezone

from django_tiercache.models import PurgeRequest
from tests.test_purgers_fastly import FASTLY, fastly_ok
from tests.test_purgers_fastly import TOKEN as FASTLY_TOKEN
from tests.test_tasks import use_app, without_purgers
from tests.testapp.models import Category, Product

pytestmark = [
    pytest.mark.skipif(
        django.VERSION < (6, 0),
        reason=f"django.tasks is new in Django 6.0 (this is {django.__version__})",
    ),
    pytest.mark.django_db(transaction=True),
]

DUMMY = {"default": {"BACKEND": "django.tasks.backends.dummy.DummyBackend"}}
IMMEDIATE = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
PURGERS = {
    "fastly": {
        "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
        "SERVICE_ID": "SU1Z0isxPaozGVKXdv0eY",
        "API_TOKEN": FASTLY_TOKEN,
    }
}


@pytest.fixture
def edge(settings: Any) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGE_ASYNC": True, "PURGERS": PURGERS}


@pytest.fixture
def fastly() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, FASTLY, callback=fastly_ok)
        yield mock


@pytest.fixture
def no_celery() -> Iterator[None]:
    """A Celery app with no broker, as Celery's default one: Celery is not configured."""
    yield from use_app()


@pytest.fixture
def enqueued() -> Iterator[list[Any]]:
    """Every task result enqueued on any django.tasks backend, in order."""
    from django.tasks.signals import task_enqueued

    seen: list[Any] = []

    def receiver(sender: Any, task_result: Any, **kwargs: Any) -> None:
        seen.append(task_result)

    task_enqueued.connect(receiver)
    yield seen
    task_enqueued.disconnect(receiver)


@pytest.fixture
def category() -> Category:
    with without_purgers():
        return Category.objects.create(name="Pens")


def run(result: Any) -> Any:
    """What a worker does with an enqueued task."""
    return result.task.call(*result.args, **result.kwargs)


def test_a_worker_backend_gets_one_task_per_commit_with_row_ids_only(
    edge: None,
    settings: Any,
    no_celery: None,
    fastly: responses.RequestsMock,
    category: Category,
    enqueued: list[Any],
) -> None:
    settings.TASKS = DUMMY
    with transaction.atomic():
        pen = Product.objects.create(name="Blue", category=category)
        Product.objects.create(name="Red", category=category)
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING  # the worker has not run yet
    assert len(fastly.calls) == 0
    (result,) = enqueued
    assert result.task.module_path == "django_tiercache.edge.djangotasks.deliver_outbox"
    assert list(result.args) == [[row.pk], "default"]
    assert FASTLY_TOKEN not in repr(result)

    assert run(result) == 1
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.DONE
    assert f"testapp.product:{pen.pk}" in fastly.calls[0].request.body.decode()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("celery", "tasks", "purge_async", "delivered_by"),
    [
        ("eager", DUMMY, True, "celery"),
        ("unconfigured", DUMMY, True, "django.tasks"),
        ("unconfigured", IMMEDIATE, True, "commit"),
        ("unconfigured", DUMMY, False, "commit"),
    ],
)
def test_celery_then_django_tasks_then_synchronous(
    edge: None,
    settings: Any,
    fastly: responses.RequestsMock,
    category: Category,
    enqueued: list[Any],
    celery: str,
    tasks: dict[str, Any],
    purge_async: bool,
    delivered_by: str,
) -> None:
    settings.TASKS = tasks
    settings.TIERCACHE = {**settings.TIERCACHE, "PURGE_ASYNC": purge_async}
    for _ in use_app(task_always_eager=celery == "eager"):
        with transaction.atomic():
            Product.objects.create(name="Blue", category=category)
        reported = {message.id for message in checks.run_checks()}
    done = PurgeRequest.objects.get().status == PurgeRequest.Status.DONE
    assert (done, len(enqueued)) == {
        "celery": (True, 0),
        "django.tasks": (False, 1),
        "commit": (True, 0),
    }[delivered_by]
    # I001 says when purges are synchronous without being asked to be.
    assert ("tiercache.I001" in reported) == (delivered_by == "commit" and purge_async)


def test_a_missing_backend_alias_means_synchronous(
    edge: None, settings: Any, no_celery: None, fastly: responses.RequestsMock, category: Category
) -> None:
    settings.TASKS = DUMMY
    settings.TIERCACHE = {**settings.TIERCACHE, "TASK_BACKEND": "purges"}
    Product.objects.create(name="Blue", category=category)
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE


def test_the_task_backend_setting_names_the_alias(
    edge: None, settings: Any, no_celery: None, category: Category, enqueued: list[Any]
) -> None:
    settings.TASKS = {**IMMEDIATE, "purges": DUMMY["default"]}
    settings.TIERCACHE = {**settings.TIERCACHE, "TASK_BACKEND": "purges"}
    Product.objects.create(name="Blue", category=category)
    from django.tasks import task_backends
    from django.tasks.backends.dummy import DummyBackend

    (result,) = enqueued
    assert result.backend == "purges"
    assert isinstance(task_backends["purges"], DummyBackend)


def test_an_unreachable_queue_leaves_the_row_pending(
    edge: None, settings: Any, no_celery: None, category: Category, caplog: Any
) -> None:
    settings.TASKS = {"default": {"BACKEND": "tests.tasks_backends.BrokenBackend"}}
    with transaction.atomic():
        Product.objects.create(name="Blue", category=category)  # does not raise
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING
    assert row.attempts == 0
    assert "stay pending for a redrive" in caplog.text


def test_a_failed_delivery_stays_pending_and_the_redrive_delivers_it(
    edge: None, settings: Any, no_celery: None, category: Category, enqueued: list[Any]
) -> None:
    from django_tiercache.edge import djangotasks

    settings.TASKS = DUMMY
    Product.objects.create(name="Blue", category=category)
    with responses.RequestsMock() as down:
        down.add(responses.POST, FASTLY, status=503, body="unavailable")
        with pytest.raises(djangotasks.PurgeNotFinished, match="503"):
            run(enqueued.pop())
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING  # left for the redrive, not lost
    assert row.attempts == 1

    assert djangotasks.redrive_outbox.call(older_than=0) == 0  # its backoff has not passed
    assert not enqueued
    PurgeRequest.objects.update(next_attempt=timezone.now() - timedelta(seconds=1))
    assert djangotasks.redrive_outbox.call(older_than=0) == 1
    (redelivery,) = enqueued
    assert list(redelivery.args) == [[row.pk], "default"]
    with responses.RequestsMock() as up:
        up.add_callback(responses.POST, FASTLY, callback=fastly_ok)
        run(redelivery)
        assert len(up.calls) == 1
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.DONE


def test_a_refusal_fails_the_row_for_an_operator(
    edge: None, settings: Any, no_celery: None, category: Category, enqueued: list[Any]
) -> None:
    from django_tiercache.edge import djangotasks

    settings.TASKS = DUMMY
    Product.objects.create(name="Blue", category=category)
    with responses.RequestsMock() as refused:
        refused.add(responses.POST, FASTLY, status=401, json={"msg": "Provided credentials"})
        run(enqueued.pop())  # not retried: nothing will change by waiting
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.FAILED
    assert djangotasks.redrive_outbox.call(older_than=0) == 0
