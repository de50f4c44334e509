"""``manage.py tiercache_purge``: keys, models, objects, everything, backends, dry run, redrive."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import responses
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_tiercache.edge.purgers import locmem
from django_tiercache.models import PurgeRequest
from django_tiercache.query import query_results
from tests.settings_operator import FASTLY_TOKEN
from tests.test_purgers_fastly import FASTLY
from tests.test_purgers_fastly import TOKEN as TEST_FASTLY_TOKEN
from tests.testapp.models import Category, Product

pytestmark = pytest.mark.django_db(transaction=True)

REPO = Path(__file__).resolve().parent.parent
LOCMEM = "django_tiercache.purgers.locmem.LocMemPurger"
FASTLY_PURGER = {
    "BACKEND": "django_tiercache.purgers.fastly.FastlyPurger",
    "SERVICE_ID": "SU1Z0isxPaozGVKXdv0eY",
    "API_TOKEN": TEST_FASTLY_TOKEN,
}

#: Outbox rows handed to :func:`recording_dispatcher`, which sends nothing.
dispatched: list[list[int]] = []


def recording_dispatcher(row_ids: list[int], using: str) -> None:
    dispatched.append(row_ids)


def purge(*args: str) -> str:
    """Run the command; its standard output."""
    out = StringIO()
    call_command("tiercache_purge", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def purge_error(*args: str) -> tuple[CommandError, str]:
    """Run a command that must fail; the error and the standard output."""
    out = StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("tiercache_purge", *args, stdout=out, stderr=StringIO())
    return excinfo.value, out.getvalue()


def configure(settings: Any, **tiercache: Any) -> None:
    settings.TIERCACHE = {**settings.TIERCACHE, **tiercache}


def cached(name: str, *keys: str) -> None:
    query_results.set(name, f"value of {name}", keys=keys)


def is_cached(name: str, *keys: str) -> bool:
    return query_results.get(name, keys=keys) is not None


def test_keys_bump_the_query_tier_then_purge_every_edge(purgers: list[locmem.PurgeCall]) -> None:
    cached("home", "shop.home")
    cached("other", "shop.other")

    out = purge("shop.home", "shop.category:7")

    assert not is_cached("home", "shop.home")
    assert is_cached("other", "shop.other")
    assert locmem.purged_keys("edge") == {"shop.home", "shop.category:7"}
    row = PurgeRequest.objects.get()
    assert row.keys == ["shop.category:7", "shop.home"]
    assert row.status == PurgeRequest.Status.DONE
    assert "query: ok, versions of 2 keys bumped" in out
    assert "edge: ok, 2 keys purged" in out
    assert f"PurgeRequest #{row.pk}: done" in out


def test_a_key_copied_from_a_response_header_purges_the_same_key(
    purgers: list[locmem.PurgeCall],
) -> None:
    purge("shop.category:Big Shoes")
    purge("shop.category:Big%20Shoes")  # as it appears in Surrogate-Key

    assert [call.keys for call in purgers] == [("shop.category:Big%20Shoes",)] * 2


def test_a_comma_separated_header_value_is_one_key_with_a_note(
    purgers: list[locmem.PurgeCall],
) -> None:
    err = StringIO()
    call_command("tiercache_purge", "a,b", stdout=StringIO(), stderr=err)

    assert locmem.purged_keys() == {"a%2Cb"}
    assert "separate arguments" in err.getvalue()


def test_model_purges_its_table_keys(purgers: list[locmem.PurgeCall]) -> None:
    purge("--model", "testapp.Product")
    assert locmem.purged_keys() == {"testapp.product"}

    locmem.reset()
    purge("--model", "testapp.specialproduct")
    assert locmem.purged_keys() == {"testapp.specialproduct", "testapp.product"}


def test_object_purges_the_keys_of_that_instance(purgers: list[locmem.PurgeCall]) -> None:
    category = Category.objects.create(name="Shoes")
    product = Product.objects.create(name="Boot", category=category)
    locmem.reset()

    out = purge("--object", f"testapp.Product:{product.pk}", "extra")

    assert locmem.purged_keys() == {
        f"testapp.product:{product.pk}",
        "testapp.product",
        f"testapp.category:{category.pk}",
        "extra",
    }
    assert "edge: ok, 4 keys purged" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "testapp.Nope"], "Unknown model 'testapp.Nope'"),
        (["--model", "product"], "Unknown model 'product'"),
        (["--object", "testapp.Product:999999"], "no testapp.Product with primary key"),
        (["--object", "testapp.Product:abc"], "--object 'testapp.Product:abc'"),
        (["--object", "testapp.Product"], "use app_label.Model:PK"),
        (["--backend", "nope", "k"], "Unknown purger nope; configured: edge"),
        (["   "], "Invalid key"),
        ([], "Nothing to purge"),
        (["--all", "k"], "--all purges everything"),
        (["--redrive", "k"], "--redrive takes no keys"),
    ],
)
def test_unknown_or_invalid_targets_exit_2_and_send_nothing(
    purgers: list[locmem.PurgeCall], args: list[str], message: str
) -> None:
    cached("home", "k")

    error, _ = purge_error(*args)

    assert error.returncode == 2
    assert message in str(error)
    assert purgers == []
    assert not PurgeRequest.objects.exists()
    assert is_cached("home", "k")


def test_backend_limits_the_purgers_and_records_the_others_as_skipped(
    settings: Any,
) -> None:
    configure(settings, PURGERS={"edge": {"BACKEND": LOCMEM}, "other": {"BACKEND": LOCMEM}})

    out = purge("k1", "--backend", "other")

    assert {call.purger for call in locmem.calls} == {"other"}
    assert "edge: skipped (not selected with --backend)" in out
    assert "other: ok, 1 key purged" in out
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.DONE
    assert row.results["edge"]["skipped"] is True


def test_without_sync_the_purge_is_enqueued_and_with_sync_sent_now(settings: Any) -> None:
    dispatched.clear()
    configure(
        settings,
        PURGE_ASYNC=True,
        DISPATCHER=f"{__name__}.recording_dispatcher",
        PURGERS={"edge": {"BACKEND": LOCMEM}},
    )

    out = purge("k1")
    row = PurgeRequest.objects.get()
    assert dispatched == [[row.pk]]
    assert locmem.calls == []
    assert "edge: enqueued" in out
    assert row.status == PurgeRequest.Status.PENDING

    out = purge("k2", "--sync")
    assert dispatched == [[row.pk]]  # not dispatched again
    assert locmem.purged_keys() == {"k2"}
    assert "edge: ok, 1 key purged" in out


@responses.activate
def test_a_failing_purger_exits_1_without_showing_its_token(settings: Any) -> None:
    configure(settings, PURGERS={"fastly": FASTLY_PURGER, "edge": {"BACKEND": LOCMEM}})
    responses.add(
        responses.POST, FASTLY, json={"msg": f"bad token {TEST_FASTLY_TOKEN}"}, status=403
    )

    error, out = purge_error("k1", "--sync")

    assert error.returncode == 1
    assert "fastly" in str(error)
    assert "fastly: FAILED (refused; fix the cause, then run --redrive)" in out
    assert "HTTP 403" in out
    assert "edge: ok, 1 key purged" in out
    assert TEST_FASTLY_TOKEN not in out + str(error)
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.FAILED


@responses.activate
def test_dry_run_prints_batches_and_api_calls_and_sends_nothing(settings: Any) -> None:
    configure(
        settings,
        PURGERS={
            "fastly": FASTLY_PURGER,
            "edge": {"BACKEND": LOCMEM, "MAX_KEYS_PER_REQUEST": 2},
        },
    )
    cached("home", "k1")

    out = purge("k1", "k2", "k3", "k4", "k5", "--dry-run")

    assert len(responses.calls) == 0
    assert locmem.calls == []
    assert not PurgeRequest.objects.exists()
    assert is_cached("home", "k1")
    assert "query: would bump the versions of 5 keys" in out
    assert "edge (LocMemPurger): 5 keys in 3 batches of at most 2" in out
    assert "keys: k5" in out
    assert (
        "batch 1: POST https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/purge "
        '{"surrogate_keys": [5 keys]} Fastly-Soft-Purge: 1'
    ) in out
    assert TEST_FASTLY_TOKEN not in out


def test_dry_run_of_everything_needs_no_confirmation(purgers: list[locmem.PurgeCall]) -> None:
    out = purge("--all", "--dry-run")

    assert "query: would drop every entry under the prefix" in out
    assert "edge (LocMemPurger): would purge everything" in out
    assert purgers == []


def test_all_refuses_without_yes_when_not_interactive(purgers: list[locmem.PurgeCall]) -> None:
    cached("home", "k")

    error, _ = purge_error("--all")

    assert error.returncode == 2
    assert "--yes" in str(error)
    assert purgers == []
    assert is_cached("home", "k")


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "purged"), [("yes\n", True), ("no\n", False)])
def test_all_asks_for_confirmation_on_a_terminal(
    purgers: list[locmem.PurgeCall], monkeypatch: pytest.MonkeyPatch, answer: str, purged: bool
) -> None:
    monkeypatch.setattr("sys.stdin", Terminal(answer))

    if purged:
        purge("--all")
    else:
        error, _ = purge_error("--all")
        assert "Cancelled: nothing was purged." in str(error)

    assert bool(purgers) is purged
    assert PurgeRequest.objects.exists() is purged


def test_all_with_yes_purges_every_edge_and_the_whole_query_tier(
    purgers: list[locmem.PurgeCall],
) -> None:
    cached("home", "k")

    out = purge("--all", "--yes")

    assert purgers == [locmem.PurgeCall("edge", (), soft=False, purge_all=True)]
    assert not is_cached("home", "k")
    assert PurgeRequest.objects.get().purge_all
    assert "query: ok, every entry dropped" in out
    assert "edge: ok, everything purged" in out


def test_without_purgers_only_the_query_tier_is_purged() -> None:
    cached("home", "k")

    out = purge("k")

    assert not is_cached("home", "k")
    assert "No edge purger configured" in out
    assert PurgeRequest.objects.get().status == PurgeRequest.Status.DONE


def redis_down(*args: Any, **kwargs: Any) -> None:
    raise ConnectionError("redis unreachable")


@pytest.mark.parametrize(
    ("args", "failing"), [(["k"], "invalidate"), (["--all", "--yes"], "clear")]
)
def test_a_purge_the_query_tier_missed_is_replayed_before_anything_is_served(
    monkeypatch: pytest.MonkeyPatch, args: list[str], failing: str
) -> None:
    """Without an edge purger the request row has nothing left for the edge, but the query
    tier's failure is: the row stays unfinished and the tier replays it, as for a commit."""
    cached("home", "k")
    with monkeypatch.context() as down:
        down.setattr(query_results.transport, failing, redis_down)
        _error, out = purge_error(*args)

    assert "query: FAILED (transient; pending for the next redrive)" in out
    row = PurgeRequest.objects.get()
    assert row.status == PurgeRequest.Status.PENDING
    assert not is_cached("home", "k")  # replayed first, then read: the purge went through
    row.refresh_from_db()
    assert row.results["query"]["ok"] is True

    out = purge("--redrive", "--older-than", "0", "--sync")
    assert f"PurgeRequest #{row.pk}: done" in out


def old_row(status: str, **fields: Any) -> PurgeRequest:
    row = PurgeRequest.objects.create(keys=["k-old"], status=status, **fields)
    PurgeRequest.objects.filter(pk=row.pk).update(created=timezone.now() - timedelta(hours=1))
    return row


def test_redrive_resends_pending_and_failed_rows(purgers: list[locmem.PurgeCall]) -> None:
    pending = old_row(PurgeRequest.Status.PENDING)
    failed = old_row(
        PurgeRequest.Status.FAILED, attempts=3, results={"edge": {"ok": False, "error": "x"}}
    )
    recent = PurgeRequest.objects.create(keys=["k-new"])

    out = purge("--redrive")

    assert locmem.purged_keys() == {"k-old"}
    assert "edge: ok, every key of these requests purged" in out
    assert "2 purge requests: 2 done" in out
    for row in (pending, failed):
        row.refresh_from_db()
        assert row.status == PurgeRequest.Status.DONE
    recent.refresh_from_db()
    assert recent.status == PurgeRequest.Status.PENDING

    locmem.reset()
    out = purge("--redrive", "--older-than", "0", "--sync")
    assert locmem.purged_keys() == {"k-new"}
    assert f"PurgeRequest #{recent.pk}: done" in out


def test_redrive_dry_run_lists_the_rows_and_sends_nothing(
    purgers: list[locmem.PurgeCall],
) -> None:
    row = old_row(PurgeRequest.Status.FAILED)

    out = purge("--redrive", "--dry-run")

    assert f"#{row.pk} 1 key (failed) attempts=0" in out
    assert "keys: k-old" in out
    assert purgers == []
    row.refresh_from_db()
    assert row.status == PurgeRequest.Status.FAILED


def test_redrive_with_nothing_to_do(purgers: list[locmem.PurgeCall]) -> None:
    assert "Nothing to redrive" in purge("--redrive")


def test_redrive_with_backend_needs_sync(purgers: list[locmem.PurgeCall]) -> None:
    error, _ = purge_error("--redrive", "--backend", "edge")
    assert error.returncode == 2


# -- through a subprocess: the process's exit status and streams, no test database needed ----


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-m", "django", "tiercache_purge", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_subprocess_dry_run_exits_0_and_shows_no_token() -> None:
    done = manage("k1", "k2", "k3", "--dry-run", "--settings=tests.settings_operator")

    assert done.returncode == 0, done.stderr
    assert "Dry run: nothing is sent." in done.stdout
    assert "edge (LocMemPurger): 3 keys in 2 batches of at most 2" in done.stdout
    assert "POST https://api.fastly.com/service/SU1Z0isxPaozGVKXdv0eY/purge" in done.stdout
    assert FASTLY_TOKEN not in done.stdout + done.stderr


def test_subprocess_all_without_yes_exits_2() -> None:
    done = manage("--all", "--settings=tests.settings_operator")

    assert done.returncode == 2
    assert "add --yes to confirm" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["k", "--backend", "akamai"], "Unknown purger akamai; configured: fastly, edge."),
        (["--model", "shop.Nothing"], "Unknown model 'shop.Nothing'"),
    ],
)
def test_subprocess_unknown_names_exit_2(args: list[str], message: str) -> None:
    done = manage(*args, "--settings=tests.settings_operator")

    assert done.returncode == 2
    assert message in done.stderr


@pytest.mark.parametrize("key", ["a b", "a,b", "a\nb", "a\tb"])
def test_a_key_that_looks_like_several_gets_a_note(
    purgers: list[locmem.PurgeCall], key: str
) -> None:
    err = StringIO()
    call_command("tiercache_purge", key, stdout=StringIO(), stderr=err)
    assert "is purged as one key" in err.getvalue()


@pytest.mark.parametrize(
    ("label", "suggestion"),
    [("testapp.prodcut", "testapp.Product"), ("testapp.categry", "testapp.Category")],
)
def test_an_unknown_model_gets_a_did_you_mean(label: str, suggestion: str) -> None:
    error, _ = purge_error("--model", label)
    assert f"Did you mean {suggestion}" in str(error)
